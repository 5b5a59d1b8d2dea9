/* The email sender: a log line per email by default (development, tests),
 * or SMTP through libcurl when SMTP_URL is set. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "app.h"

struct mailer {
  char *url;  /* NULL: the log sink */
  char *from;
  long timeout_ms;
};

int mailer_new(mailer **out, const settings *s)
{
  mailer *m = calloc(1, sizeof *m);
  if (!m) return tl_error_set(TL_ENOMEM, "mailer: out of memory");
  m->from = strdup(s->smtp_from);
  m->url = s->smtp_url && *s->smtp_url ? strdup(s->smtp_url) : NULL;
  m->timeout_ms = (long)(s->smtp_timeout_us / 1000);
  if (!m->from || (s->smtp_url && *s->smtp_url && !m->url)) {
    mailer_free(m);
    return tl_error_set(TL_ENOMEM, "mailer: out of memory");
  }
  if (m->url && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    mailer_free(m);
    return tl_error_set(TL_EINTERNAL, "mailer: libcurl did not initialise");
  }
  *out = m;
  return 0;
}

void mailer_free(mailer *m)
{
  if (!m) return;
  free(m->url);
  free(m->from);
  free(m);
}

typedef struct upload {
  const char *data;
  size_t left;
} upload;

static size_t read_cb(char *buf, size_t size, size_t nitems, void *ctx)
{
  upload *u = ctx;
  size_t n = size * nitems < u->left ? size * nitems : u->left;
  memcpy(buf, u->data, n);
  u->data += n;
  u->left -= n;
  return n;
}

/* Header values come from our own data, but an address or subject with a
 * line break would inject headers: refuse it. */
static bool header_safe(const char *s)
{
  return s && !strpbrk(s, "\r\n");
}

int mailer_send(mailer *m, const char *to, const char *subject, const char *body)
{
  if (!header_safe(to) || !header_safe(subject))
    return tl_error_set(TL_EINVAL, "mailer: a line break in the address or the subject");
  if (!m->url) {
    tl_log(TL_LOG_INFO, "email sent", TL_F_STR("sink", "log"), TL_F_STR("to", to),
           TL_F_STR("subject", subject), TL_F_STR("body", body));
    return 0;
  }
  char date[64], mid[TL_UUID_STRLEN];
  time_t now = time(NULL);
  struct tm tm;
  strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", gmtime_r(&now, &tm));
  tl_uuid7(mid);
  size_t cap = strlen(body) + strlen(to) + strlen(subject) + strlen(m->from) + 256;
  char *msg = malloc(cap);
  if (!msg) return tl_error_set(TL_ENOMEM, "mailer: out of memory");
  int len = snprintf(msg, cap,
                     "Date: %s\r\nTo: <%s>\r\nFrom: <%s>\r\nSubject: %s\r\n"
                     "Message-ID: <%s@api-management>\r\nMIME-Version: 1.0\r\n"
                     "Content-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n",
                     date, to, m->from, subject, mid, body);
  CURL *c = curl_easy_init();
  if (!c) {
    free(msg);
    return tl_error_set(TL_ENOMEM, "mailer: no curl handle");
  }
  upload u = { msg, (size_t)len };
  struct curl_slist *rcpt = curl_slist_append(NULL, to);
  char from[300];
  snprintf(from, sizeof from, "<%s>", m->from);
  curl_easy_setopt(c, CURLOPT_URL, m->url);
  curl_easy_setopt(c, CURLOPT_MAIL_FROM, from);
  curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
  curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
  curl_easy_setopt(c, CURLOPT_READDATA, &u);
  curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, m->timeout_ms);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  CURLcode cc = curl_easy_perform(c);
  curl_slist_free_all(rcpt);
  curl_easy_cleanup(c);
  free(msg);
  if (cc != CURLE_OK)
    return tl_error_set(cc == CURLE_OPERATION_TIMEDOUT ? TL_ETIMEOUT : TL_EIO, "smtp: %s",
                        curl_easy_strerror(cc));
  tl_log(TL_LOG_INFO, "email sent", TL_F_STR("sink", "smtp"), TL_F_STR("to", to),
         TL_F_STR("subject", subject));
  return 0;
}
