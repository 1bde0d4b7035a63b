#!/usr/bin/env python3
"""Signs a mail with DKIM using dkimpy (a signer no one here wrote).

  dkim_sign.py KEY.pem SELECTOR DOMAIN < mail > signed-mail
"""
import sys

import dkim

key_path, selector, domain = sys.argv[1:4]
message = sys.stdin.buffer.read()
with open(key_path, "rb") as f:
    key = f.read()
signature = dkim.sign(
    message,
    selector.encode(),
    domain.encode(),
    key,
    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
)
sys.stdout.buffer.write(signature + message)
