#!/usr/bin/env python3
"""An SMPP client no one here wrote (Python's smpplib) against a mail2sms node.

  smpp_client.py submit HOST PORT SYSTEM_ID PASSWORD NUMBER TEXT TIMEOUT_SECS
      Binds as a transceiver, submits one message to NUMBER (E.164) asking for a delivery
      receipt, then waits up to TIMEOUT_SECS for the receipt. Prints JSON:
      {"bind": status, "submit": status, "message_id": str, "receipt": {"id": str,
       "stat": str, "message_state": int | null} | null, "error": str | null}

  smpp_client.py bind HOST PORT SYSTEM_ID PASSWORD
      Binds and unbinds; prints {"bind": status, "error": str | null}.
"""
import json
import sys
import time

import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm


def connect(host, port, system_id, password):
    c = smpplib.client.Client(host, int(port), timeout=10)
    c.connect()
    c.bind_transceiver(system_id=system_id, password=password)
    return c


def bind(argv):
    host, port, system_id, password = argv
    out = {"bind": None, "error": None}
    try:
        c = connect(host, port, system_id, password)
        out["bind"] = 0
        c.unbind()
        c.disconnect()
    except smpplib.exceptions.PDUError as e:
        out["bind"] = e.args[1] if len(e.args) > 1 else -1
        out["error"] = str(e)
    except Exception as e:  # the test reads the sentence
        out["error"] = repr(e)
    print(json.dumps(out))


def submit(argv):
    host, port, system_id, password, number, text, timeout = argv
    out = {"bind": None, "submit": None, "message_id": None, "receipt": None, "error": None}
    try:
        c = connect(host, port, system_id, password)
        out["bind"] = 0

        def sent(pdu):
            out["submit"] = pdu.status
            mid = pdu.message_id
            out["message_id"] = mid.decode() if isinstance(mid, bytes) else mid

        def received(pdu):
            text = pdu.short_message
            text = text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)
            fields = dict(w.split(":", 1) for w in text.split(" ") if ":" in w)
            rid = getattr(pdu, "receipted_message_id", None)
            if isinstance(rid, bytes):
                rid = rid.decode()
            out["receipt"] = {
                "id": rid or fields.get("id"),
                "stat": fields.get("stat"),
                "message_state": getattr(pdu, "message_state", None),
            }

        c.set_message_sent_handler(sent)
        c.set_message_received_handler(received)
        parts, coding, esm_class = smpplib.gsm.make_parts(text)
        for part in parts:
            c.send_message(
                source_addr_ton=smpplib.consts.SMPP_TON_ALNUM,
                source_addr="test",
                dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN,
                destination_addr=number.lstrip("+"),
                short_message=part,
                data_coding=coding,
                esm_class=esm_class,
                registered_delivery=True,
            )
        deadline = time.time() + float(timeout)
        c._socket.settimeout(1)
        while out["receipt"] is None and time.time() < deadline:
            try:
                c.read_once()
            except smpplib.exceptions.ConnectionError:
                break
            except Exception as e:
                if "timed out" not in repr(e):
                    raise
        c.unbind()
        c.disconnect()
    except Exception as e:
        out["error"] = repr(e)
    print(json.dumps(out))


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    {"submit": submit, "bind": bind}[cmd](rest)
