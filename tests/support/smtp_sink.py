"""A real SMTP server on loopback for the automation tests (aiosmtpd): every message it
receives is written to OUT_DIR as <n>.eml, atomically (written to a temporary name, then
renamed), so a test that sees the file sees all of it.

usage: python3 smtp_sink.py PORT OUT_DIR
"""

import asyncio
import itertools
import os
import sys

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.counter = itertools.count(len(os.listdir(out_dir)) + 1)

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        tmp = os.path.join(self.out_dir, f".{n}.tmp")
        with open(tmp, "wb") as f:
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(self.out_dir, f"{n:04d}.eml"))
        return "250 OK"


def main():
    port, out_dir = int(sys.argv[1]), sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    controller = Controller(Sink(out_dir), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
