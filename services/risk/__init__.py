"""Risk: turns signals into approved orders or rejections naming the rule."""
