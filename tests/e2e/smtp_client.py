#!/usr/bin/env python3
"""SMTP clients for the end-to-end tests, built on Python's smtplib (a client no one here wrote).

  smtp_client.py send HOST PORT FROM RCPT[,RCPT...] SUBJECT BODY [--starttls --user U --password P]
      One mail; prints JSON: {"refused": {rcpt: [code, text]}, "data": [code, text] | null,
      "error": str | null}.

  smtp_client.py burst HOST PORT FROM FIRST_NUMBER COUNT
      COUNT mails on one connection, each to the next number after FIRST_NUMBER (E.164);
      prints how many got 250.

  smtp_client.py load HOST PORT CLIENTS MAILS_PER_CLIENT ACKED_FILE
      CLIENTS threads each send MAILS_PER_CLIENT mails with a unique Message-ID, one connection
      per mail; every Message-ID that got 250 after DATA is appended to ACKED_FILE and flushed
      before the next mail starts. Connection errors (the gateway was killed) end the thread.
"""
import json
import smtplib
import ssl
import sys
import threading
from email.message import EmailMessage


def build(sender, rcpts, subject, body, msgid=None):
    m = EmailMessage()
    m["From"] = sender
    m["To"] = ", ".join(rcpts)
    m["Subject"] = subject
    if msgid:
        m["Message-ID"] = msgid
    m.set_content(body)
    return m


def send(argv):
    host, port, sender, rcpts, subject, body = argv[:6]
    rest = argv[6:]
    rcpts = rcpts.split(",")
    result = {"refused": {}, "data": None, "error": None}
    try:
        s = smtplib.SMTP(host, int(port), timeout=30)
        s.ehlo("client.example")
        if "--starttls" in rest:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo("client.example")
        if "--user" in rest:
            s.login(rest[rest.index("--user") + 1], rest[rest.index("--password") + 1])
        msg = build(sender, rcpts, subject, body)
        code, text = s.mail(sender)
        if code != 250:
            result["error"] = f"MAIL {code} {text.decode()}"
        else:
            accepted = 0
            for r in rcpts:
                code, text = s.rcpt(r)
                if code in (250, 251):
                    accepted += 1
                else:
                    result["refused"][r] = [code, text.decode()]
            if accepted:
                code, text = s.data(msg.as_bytes())
                result["data"] = [code, text.decode()]
        s.quit()
    except smtplib.SMTPException as e:
        result["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(result))


def load(argv):
    host, port, clients, per_client, acked_file = argv[:5]
    clients, per_client = int(clients), int(per_client)
    lock = threading.Lock()
    out = open(acked_file, "a", buffering=1)

    def worker(c):
        for i in range(per_client):
            msgid = f"<load-{c}-{i}@client.example>"
            number = "+336%08d" % (c * 100000 + i)
            msg = build("load@client.example", [f"{number}@sms"], f"load {c}-{i}", f"token {c}-{i}", msgid)
            try:
                s = smtplib.SMTP(host, int(port), timeout=30)
                s.sendmail("load@client.example", [f"{number}@sms"], msg.as_bytes())
                # sendmail returns only after the 250 to DATA; record it before anything else.
                with lock:
                    out.write(msgid + "\n")
                    out.flush()
                try:
                    s.quit()
                except Exception:
                    pass
            except (OSError, smtplib.SMTPException):
                return

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def burst(argv):
    host, port, sender, first, count = argv[:5]
    base = int(first.lstrip("+"))
    accepted = 0
    s = smtplib.SMTP(host, int(port), timeout=60)
    s.ehlo("client.example")
    for i in range(int(count)):
        number = "+%d" % (base + i)
        msg = build(sender, [f"{number}@sms"], "promo", f"code {i}", f"<burst-{i}@client.example>")
        try:
            s.sendmail(sender, [f"{number}@sms"], msg.as_bytes())
            accepted += 1
        except smtplib.SMTPException:
            pass
    s.quit()
    print(accepted)


if __name__ == "__main__":
    {"send": send, "load": load, "burst": burst}[sys.argv[1]](sys.argv[2:])
