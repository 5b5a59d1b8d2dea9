#!/usr/bin/env bash
# One SMTP session on stdin/stdout (run by socat per connection): accepts
# every command and appends the envelope and the message to $SMTP_OUT.
# Enough SMTP for libcurl's client: EHLO, MAIL, RCPT, DATA, QUIT.
set -u
out=${SMTP_OUT:?SMTP_OUT must name the file that collects the messages}
reply() { printf '%s\r\n' "$@"; }
reply "220 sink ESMTP"
while IFS= read -r line; do
  line=${line%$'\r'}
  case ${line^^} in
    EHLO* | HELO*) reply "250-sink" "250 OK" ;;
    "MAIL FROM:"* | "RCPT TO:"*) echo "$line" >>"$out"; reply "250 OK" ;;
    DATA)
      reply "354 end with <CRLF>.<CRLF>"
      while IFS= read -r d; do
        d=${d%$'\r'}
        [ "$d" = "." ] && break
        echo "$d" >>"$out"
      done
      echo "--- end of message" >>"$out"
      reply "250 queued" ;;
    QUIT) reply "221 bye"; exit 0 ;;
    *) reply "250 OK" ;;
  esac
done
