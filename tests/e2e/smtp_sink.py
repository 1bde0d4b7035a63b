#!/usr/bin/env python3
"""An SMTP relay for the end-to-end tests, on aiosmtpd: takes every mail and writes it as a JSON
line (mail_from, rcpt_tos, data) to OUTFILE.

    smtp_sink.py PORT OUTFILE

Prints "ready" once it listens. While a file OUTFILE.hold exists, a mail's DATA is held: the
sink writes OUTFILE.held and answers only once OUTFILE.hold is removed (a relay slow to answer,
for a test to act while a mail is on its way).
"""
import asyncio
import json
import os
import sys

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, path):
        self.path = path

    async def handle_DATA(self, server, session, envelope):
        hold = self.path + ".hold"
        if os.path.exists(hold):
            open(self.path + ".held", "w").close()
            while os.path.exists(hold):
                await asyncio.sleep(0.05)
        with open(self.path, "a") as f:
            f.write(
                json.dumps(
                    {
                        "mail_from": envelope.mail_from,
                        "rcpt_tos": envelope.rcpt_tos,
                        "data": envelope.content.decode("utf-8", "replace"),
                    }
                )
                + "\n"
            )
        return "250 OK"


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    controller = Controller(Sink(path), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.new_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
