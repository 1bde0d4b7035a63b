#!/usr/bin/env python3
"""Parses the mails smtp_sink.py received with Python's email package (a parser no one here
wrote) and prints, as one JSON list, what each says as a delivery status notification:

    dsn_parse.py SINK_FILE

Per mail: envelope (mail_from, rcpt_tos), headers (subject, in_reply_to, references,
auto_submitted), content_type and its report-type, the per-message fields, one object per
per-recipient block (final_recipient, original_recipient, action, status, diagnostic_code),
the human-readable text, and the content types of the parts in order.
"""
import json
import sys
from email import message_from_bytes, policy


def field(block, name):
    v = block.get(name)
    return None if v is None else str(v).strip()


def parse(entry):
    msg = message_from_bytes(entry["data"].encode("utf-8"), policy=policy.default)
    out = {
        "mail_from": entry["mail_from"],
        "rcpt_tos": entry["rcpt_tos"],
        "subject": str(msg["Subject"]) if msg["Subject"] is not None else None,
        "in_reply_to": field(msg, "In-Reply-To"),
        "references": field(msg, "References"),
        "auto_submitted": field(msg, "Auto-Submitted"),
        "content_type": msg.get_content_type(),
        "report_type": msg.get_param("report-type"),
        "parts": [],
        "per_message": {},
        "recipients": [],
        "human": None,
    }
    if not msg.is_multipart():
        return out
    for part in msg.get_payload():
        ctype = part.get_content_type()
        out["parts"].append(ctype)
        if ctype == "message/delivery-status":
            blocks = part.get_payload()
            if blocks:
                out["per_message"] = {k.lower(): str(v) for k, v in blocks[0].items()}
            for b in blocks[1:]:
                out["recipients"].append(
                    {
                        "final_recipient": field(b, "Final-Recipient"),
                        "original_recipient": field(b, "Original-Recipient"),
                        "action": field(b, "Action"),
                        "status": field(b, "Status"),
                        "diagnostic_code": field(b, "Diagnostic-Code"),
                    }
                )
        elif ctype == "text/plain" and out["human"] is None:
            out["human"] = part.get_content()
    return out


def main():
    replies = []
    try:
        with open(sys.argv[1]) as f:
            for line in f:
                if line.strip():
                    replies.append(parse(json.loads(line)))
    except FileNotFoundError:
        pass
    print(json.dumps(replies))


if __name__ == "__main__":
    main()
