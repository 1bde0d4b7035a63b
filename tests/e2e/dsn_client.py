#!/usr/bin/env python3
"""Sends one mail asking for delivery status notifications, with Python's smtplib.

    dsn_client.py HOST PORT FROM RCPT[,RCPT...] NOTIFY [--header "Name: value"]... [--body TEXT]
                  [--msgid ID]

FROM may be empty for the null sender <>. NOTIFY is given on every RCPT (RFC 3461), e.g.
SUCCESS,FAILURE; "-" sends no NOTIFY parameter. Prints JSON: {"rcpt": {rcpt: code},
"data": code | null, "error": str | null}.
"""
import json
import smtplib
import sys
from email.message import EmailMessage


def main(argv):
    host, port, sender, rcpts, notify = argv[:5]
    rest = argv[5:]
    rcpts = rcpts.split(",")
    m = EmailMessage()
    m["From"] = sender or "mailer-daemon@client.example"
    m["To"] = ", ".join(rcpts)
    m["Subject"] = "status please"
    body = "Are you there?"
    i = 0
    while i < len(rest):
        if rest[i] == "--header":
            name, value = rest[i + 1].split(":", 1)
            m[name.strip()] = value.strip()
        elif rest[i] == "--body":
            body = rest[i + 1]
        elif rest[i] == "--msgid":
            m["Message-ID"] = rest[i + 1]
        i += 2
    m.set_content(body)
    out = {"rcpt": {}, "data": None, "error": None}
    try:
        s = smtplib.SMTP(host, int(port), timeout=30)
        s.ehlo("client.example")
        code, text = s.mail(sender)
        if code != 250:
            raise smtplib.SMTPException(f"MAIL {code} {text.decode()}")
        options = [] if notify == "-" else [f"NOTIFY={notify}"]
        for r in rcpts:
            code, _ = s.rcpt(r, options)
            out["rcpt"][r] = code
        code, _ = s.data(m.as_bytes())
        out["data"] = code
        s.quit()
    except smtplib.SMTPException as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
