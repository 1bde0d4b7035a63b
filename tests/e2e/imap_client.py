#!/usr/bin/env python3
"""An IMAP client for the end-to-end tests, on Python's imaplib (a client no one here wrote).

    imap_client.py HOST PORT USER PASSWORD COMMAND ARGS...

Commands:
    append FOLDER COUNT PREFIX [RATE] [LOG]
        appends COUNT mails with Message-ID <PREFIX-i@test> and an SMS recipient each, RATE per
        second (0: as fast as possible); LOG gets "message-id epoch-ms" once each APPEND is done
    append-file FOLDER FILE...      appends each file as it is
    ids FOLDER                      prints the Message-ID of every mail in FOLDER, one per line
    count FOLDER                    prints how many mails FOLDER holds
    recreate FOLDER                 deletes FOLDER and creates it again (a new UIDVALIDITY)
    uidvalidity FOLDER              prints FOLDER's UIDVALIDITY
    copy-all FROM TO                copies every mail of FROM into TO
    create FOLDER...                creates folders (existing ones are fine)
"""
import imaplib
import re
import sys
import time


def connect(host, port, user, password):
    m = imaplib.IMAP4(host, int(port))
    m.login(user, password)
    return m


def mail(prefix, i):
    # Numbers +33 6 00 00 00 01 ... are valid French mobile numbers.
    number = "+336%08d" % (i + 1)
    return (
        "Return-Path: <sender-%d@example.com>\r\n"
        "From: Sender %d <sender-%d@example.com>\r\n"
        "To: Person %d <Person@%s@sms>\r\n"
        "Subject: Test %s %d\r\n"
        "Message-ID: <%s-%d@test>\r\n"
        "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
        "\r\n"
        "Message number %d from the IMAP test.\r\n"
        % (i, i, i, i, number, prefix, i, prefix, i, i)
    ).encode()


def ids(m, folder):
    typ, data = m.select('"%s"' % folder, readonly=True)
    if typ != "OK":
        raise SystemExit("cannot select %s: %s" % (folder, data))
    if int(data[0]) == 0:
        return []
    typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    out = []
    for item in data:
        if isinstance(item, tuple):
            found = re.search(rb"<([^>]*)>", item[1])
            out.append(found.group(1).decode() if found else "")
    return out


def present(m, folder, message):
    """True when a mail with this message's Message-ID is in FOLDER."""
    found = re.search(rb"Message-ID: <([^>]*)>", message)
    if not found:
        return False
    typ, data = m.select('"%s"' % folder, readonly=True)
    if typ != "OK":
        return False
    typ, data = m.uid("SEARCH", None, "HEADER", "Message-ID", '"%s"' % found.group(1).decode())
    m.unselect()
    return typ == "OK" and bool(data and data[0] and data[0].split())


# What Dovecot answers to an APPEND racing with the test's own DELETE and CREATE of the folder:
# "Mailbox was deleted under us", or, when the race hits its index instead, an internal error.
RACED = (b"deleted under us", b"[SERVERBUG]")


def append(m, folder, message, reconnect):
    """APPEND, tried again on a fresh session when Dovecot answers NO because the test itself has
    just deleted and recreated the folder (see RACED). Such a NO may come after the mail was
    stored (Dovecot saves, then fails to sync the folder's index), so the retry first looks for
    the mail: appending it blindly would put a second copy in the folder, which a gateway rightly
    queues once and moves twice."""
    for attempt in range(20):
        typ, data = m.append('"%s"' % folder, None, None, message)
        said = b" ".join(d for d in data if d)
        if typ == "OK" or not any(r in said for r in RACED):
            return m, typ, data
        time.sleep(0.1)
        try:
            m.logout()
        except Exception:
            pass
        m = reconnect()
        if present(m, folder, message):
            sys.stderr.write("APPEND answered NO but stored the mail: %s\n" % data)
            return m, "OK", data
    return m, typ, data


def main():
    host, port, user, password, command = sys.argv[1:6]
    args = sys.argv[6:]
    m = connect(host, port, user, password)
    reconnect = lambda: connect(host, port, user, password)
    if command == "append":
        folder, count, prefix = args[0], int(args[1]), args[2]
        rate = float(args[3]) if len(args) > 3 else 0.0
        log = open(args[4], "a", buffering=1) if len(args) > 4 else None
        start = time.monotonic()
        for i in range(count):
            if rate > 0:
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            m, typ, data = append(m, folder, mail(prefix, i), reconnect)
            if typ != "OK":
                raise SystemExit("APPEND failed: %s" % data)
            if log:
                log.write("%s-%d@test %d\n" % (prefix, i, int(time.time() * 1000)))
    elif command == "append-file":
        folder = args[0]
        for path in args[1:]:
            with open(path, "rb") as f:
                m, typ, data = append(m, folder, f.read(), reconnect)
            if typ != "OK":
                raise SystemExit("APPEND failed: %s" % data)
    elif command == "ids":
        for i in ids(m, args[0]):
            print(i)
    elif command == "count":
        typ, data = m.select('"%s"' % args[0], readonly=True)
        print(int(data[0]) if typ == "OK" else -1)
    elif command == "recreate":
        m.delete('"%s"' % args[0])
        typ, data = m.create('"%s"' % args[0])
        if typ != "OK":
            raise SystemExit("CREATE failed: %s" % data)
    elif command == "uidvalidity":
        typ, data = m.status('"%s"' % args[0], "(UIDVALIDITY)")
        print(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1).decode())
    elif command == "copy-all":
        typ, data = m.select('"%s"' % args[0])
        if int(data[0]) > 0:
            typ, data = m.copy("1:*", '"%s"' % args[1])
            if typ != "OK":
                raise SystemExit("COPY failed: %s" % data)
    elif command == "create":
        for folder in args:
            m.create('"%s"' % folder)
    else:
        raise SystemExit("unknown command " + command)
    m.logout()


if __name__ == "__main__":
    main()
