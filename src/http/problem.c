/* Reason phrases, RFC 9457 problem documents, and JSON request bodies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core_int.h"
#include "http_int.h"
#include "trellis/error.h"

const char *tl_http_reason(int status)
{
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 203: return "Non-Authoritative Information";
  case 204: return "No Content";
  case 205: return "Reset Content";
  case 206: return "Partial Content";
  case 300: return "Multiple Choices";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 402: return "Payment Required";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 406: return "Not Acceptable";
  case 407: return "Proxy Authentication Required";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 412: return "Precondition Failed";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 416: return "Range Not Satisfiable";
  case 417: return "Expectation Failed";
  case 421: return "Misdirected Request";
  case 422: return "Unprocessable Content";
  case 423: return "Locked";
  case 424: return "Failed Dependency";
  case 425: return "Too Early";
  case 426: return "Upgrade Required";
  case 428: return "Precondition Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 451: return "Unavailable For Legal Reasons";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  case 507: return "Insufficient Storage";
  case 511: return "Network Authentication Required";
  default: return "Unknown";
  }
}

int tl__res_problemv(tl_http_res *res, int status, const char *fmt, va_list ap)
{
  char stack[512];
  char *detail = stack;
  va_list ap2;
  va_copy(ap2, ap);
  int n = fmt ? vsnprintf(stack, sizeof stack, fmt, ap) : -1;
  if (n < 0) {
    stack[0] = '\0';
    n = 0;
  } else if ((size_t)n >= sizeof stack) {
    detail = malloc((size_t)n + 1);
    if (detail)
      vsnprintf(detail, (size_t)n + 1, fmt, ap2);
    else
      detail = stack; /* truncated, still a document */
  }
  va_end(ap2);

  const tl_http_req *req = res->req;
  tl__buf b = TL__BUF_INIT;
  char num[16];
  snprintf(num, sizeof num, "%d", status);
  const char *title = tl_http_reason(status);
  tl__buf_puts(&b, "{\"type\":\"about:blank\",\"title\":");
  tl__buf_json_str(&b, title, strlen(title));
  tl__buf_puts(&b, ",\"status\":");
  tl__buf_puts(&b, num);
  tl__buf_puts(&b, ",\"detail\":");
  tl__buf_json_str(&b, detail, strlen(detail));
  tl__buf_puts(&b, ",\"instance\":");
  tl__buf_json_str(&b, req->path ? req->path : "", req->path ? req->path_len : 0);
  tl__buf_puts(&b, ",\"request_id\":");
  tl__buf_json_str(&b, req->id, strlen(req->id));
  tl__buf_puts(&b, "}");
  if (detail != stack)
    free(detail);
  size_t len = 0;
  char *text = tl__buf_steal(&b, &len);
  if (!text)
    return tl_error_set(TL_ENOMEM, "http: out of memory for a problem document");
  tl__res_body_take(res, text, len, "application/problem+json", free);
  res->status = status;
  res->is_problem = true;
  return 0;
}

int tl_http_res_problem(tl_http_res *res, int status, const char *detail_fmt, ...)
{
  va_list ap;
  va_start(ap, detail_fmt);
  int rc = tl__res_problemv(res, status, detail_fmt, ap);
  va_end(ap);
  return rc;
}

int tl_http_req_json(tl_http_req *req, tl_http_res *res, json_t **out)
{
  *out = NULL;
  size_t len = 0;
  const char *body = tl_http_req_body(req, &len);
  json_error_t err;
  /* A key given twice is ambiguous (which one counts?): refuse it. */
  json_t *j = json_loadb(body, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
  if (!j) {
    tl_http_res_problem(res, 400, "malformed JSON at line %d, column %d: %s",
                        err.line, err.column, err.text);
    return tl_error_set(TL_EINVAL, "http: malformed JSON at line %d, column %d: %s",
                        err.line, err.column, err.text);
  }
  *out = j;
  return 0;
}
