#!/usr/bin/env python3
"""Draws the template images (our own, plain geometric art): a coloured rounded square with a
pulse line for the icon, a wordmark-free logo block and a strip banner, at 1x/2x/3x.
Run from this directory: python3 make_images.py"""
import struct
import zlib

TEMPLATES = {
    "loyalty": ((60, 65, 76), (255, 196, 0)),
    "coupon": ((181, 32, 58), (255, 255, 255)),
    "ticket": ((24, 84, 160), (120, 220, 255)),
}
SIZES = {"icon": (29, 29), "logo": (160, 50), "strip": (375, 123)}


def png(width, height, pixel):
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            rows.extend(pixel(x, y))
    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(rows), 9)) + chunk(b"IEND", b""))


def artwork(kind, w, h, bg, fg):
    def pixel(x, y):
        u, v = x / w, y / h
        # a pulse line across the middle: flat, a spike, flat
        mid = 0.5
        if 0.35 < u < 0.45:
            mid = 0.5 - (u - 0.35) * 4
        elif 0.45 <= u < 0.55:
            mid = 0.1 + (u - 0.45) * 8
        elif 0.55 <= u < 0.62:
            mid = 0.9 - (u - 0.55) * 5.7
        thick = 0.06 if kind != "strip" else 0.03
        on_line = abs(v - mid) < thick
        if kind == "icon":
            r = 0.22
            cx, cy = min(u, 1 - u), min(v, 1 - v)
            if cx < r and cy < r and (r - cx) ** 2 + (r - cy) ** 2 > r * r:
                return (0, 0, 0, 0)
        if kind == "logo" and not on_line:
            return (0, 0, 0, 0)
        c = fg if on_line else bg
        return (*c, 255)
    return pixel


for name, (bg, fg) in TEMPLATES.items():
    for kind, (w, h) in SIZES.items():
        if kind == "strip" and name == "ticket":
            continue  # event tickets with a strip may not have a background image; keep it plain
        for scale, suffix in ((1, ""), (2, "@2x"), (3, "@3x")):
            W, H = w * scale, h * scale
            with open(f"{name}/{kind}{suffix}.png", "wb") as f:
                f.write(png(W, H, artwork(kind, W, H, bg, fg)))
