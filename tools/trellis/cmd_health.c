/* trellis health [URL]: exit 0 only when the service's readiness answers
 * 200. A plain HTTP/1.1 GET over a socket, so a container health check
 * needs no curl. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli.h"

/* Split "http://host[:port][/path]" (host may be "[v6]") into parts.
 * Returns 0 or -1. */
static int parse_url(const char *url, char *host, size_t hsz, char *port, size_t psz,
                     const char **path)
{
  if (strncmp(url, "http://", 7) != 0)
    return -1;
  const char *h = url + 7, *end;
  if (*h == '[') {
    end = strchr(h, ']');
    if (!end)
      return -1;
    h++;
  } else {
    end = h + strcspn(h, ":/");
  }
  size_t hlen = (size_t)(end - h);
  if (hlen == 0 || hlen >= hsz)
    return -1;
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  const char *p = *end == ']' ? end + 1 : end;
  if (*p == ':') {
    size_t plen = strcspn(p + 1, "/");
    if (plen == 0 || plen >= psz || strspn(p + 1, "0123456789") != plen)
      return -1;
    memcpy(port, p + 1, plen);
    port[plen] = '\0';
    p += 1 + plen;
  } else {
    snprintf(port, psz, "80");
  }
  if (*p != '\0' && *p != '/')
    return -1;
  *path = *p ? p : "/";
  return 0;
}

static int wait_fd(int fd, short events, int64_t deadline)
{
  int64_t left = (deadline - tl_time_mono_us()) / 1000;
  if (left <= 0)
    return -1;
  struct pollfd p = { .fd = fd, .events = events };
  int r = poll(&p, 1, (int)left);
  return r > 0 ? 0 : -1;
}

int cli_cmd_health(int argc, char **argv, const tl_config *cfg)
{
  const char *url = NULL;
  int64_t timeout_us = 5000000;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
      if (tl_duration_parse(argv[++i], &timeout_us) != 0 || timeout_us <= 0) {
        fprintf(stderr, "trellis health: --timeout: '%s' is not a duration (e.g. 5s)\n", argv[i]);
        return CLI_USAGE;
      }
    } else if (argv[i][0] != '-' && !url) {
      url = argv[i];
    } else {
      fprintf(stderr, "usage: trellis health [URL] [--timeout DURATION]\n");
      return CLI_USAGE;
    }
  }
  char dflt[64];
  if (!url) {
    int64_t port;
    if (tl_config_int(cfg, "HTTP_PORT", 8080, 1, 65535, &port) != 0) {
      cli_fail("health", "cannot build the default URL");
      return CLI_USAGE;
    }
    snprintf(dflt, sizeof dflt, "http://127.0.0.1:%lld/health/ready", (long long)port);
    url = dflt;
  }
  char host[256], port[16];
  const char *path;
  if (parse_url(url, host, sizeof host, port, sizeof port, &path) != 0) {
    fprintf(stderr, "trellis health: '%s' is not an http://host[:port]/path URL\n", url);
    return CLI_USAGE;
  }

  int64_t deadline = tl_time_mono_us() + timeout_us;
  struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
  int gai = getaddrinfo(host, port, &hints, &ai);
  if (gai != 0) {
    fprintf(stderr, "trellis health: %s: %s\n", url, gai_strerror(gai));
    return CLI_FAIL;
  }
  int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int ok = fd >= 0 && (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS);
  freeaddrinfo(ai);
  if (ok && wait_fd(fd, POLLOUT, deadline) == 0) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    ok = err == 0;
    errno = err;
  } else {
    ok = 0;
  }
  if (!ok) {
    fprintf(stderr, "trellis health: %s: cannot connect: %s\n", url,
            errno ? strerror(errno) : "timed out");
    if (fd >= 0)
      close(fd);
    return CLI_FAIL;
  }
  char req[1024];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: trellis-health\r\n"
                   "Connection: close\r\n\r\n", path, host, port);
  if (n < 0 || (size_t)n >= sizeof req || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
    fprintf(stderr, "trellis health: %s: cannot send the request\n", url);
    close(fd);
    return CLI_FAIL;
  }
  char resp[4096];
  size_t got = 0;
  while (got < sizeof resp - 1 && wait_fd(fd, POLLIN, deadline) == 0) {
    ssize_t r = recv(fd, resp + got, sizeof resp - 1 - got, 0);
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  resp[got] = '\0';
  int status = 0;
  if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1) {
    fprintf(stderr, "trellis health: %s: no HTTP answer within the timeout\n", url);
    return CLI_FAIL;
  }
  const char *body = strstr(resp, "\r\n\r\n");
  printf("%d %s\n", status, body ? body + 4 : "");
  return status == 200 ? CLI_OK : CLI_FAIL;
}
