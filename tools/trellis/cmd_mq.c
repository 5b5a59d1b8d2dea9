/* trellis mq pub|sub: publish one message, or print the messages of a
 * pattern as JSON lines, on the configured backend (MESSAGE_QUEUE_TYPE,
 * KAFKA_BROKERS, RABBITMQ_URL, NATS_URL, ...) or the one given with
 * --type/--url. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <trellis/mq.h>

#include "cli.h"

static void usage(FILE *out)
{
  fprintf(out,
          "usage: trellis mq pub SUBJECT DATA [--header K=V]... [--key KEY] [--type T] [--url URL]\n"
          "       trellis mq sub PATTERN [--group G] [--count N] [--timeout DURATION]\n"
          "                      [--type T] [--url URL]\n"
          "       trellis mq kafka-mock [--brokers N] [--topic T]\n"
          "  --type   memory, kafka, rabbitmq or nats (default: MESSAGE_QUEUE_TYPE)\n"
          "  --url    the broker: amqp://..., nats://..., or Kafka's host:port list\n"
          "sub prints one JSON object per message: subject, data, headers, delivery.\n"
          "kafka-mock hosts librdkafka's mock Kafka cluster (in memory) until SIGINT or\n"
          "SIGTERM, and prints its bootstrap list (KAFKA_BROKERS for other processes).\n");
}

/* JSON string: escapes, and U+FFFD for bytes that are not UTF-8. */
static void put_json(FILE *f, const unsigned char *s, size_t n)
{
  fputc('"', f);
  for (size_t i = 0; i < n;) {
    unsigned char c = s[i];
    if (c == '"' || c == '\\') {
      fputc('\\', f);
      fputc(c, f);
      i++;
    } else if (c < 0x20) {
      switch (c) {
      case '\n': fputs("\\n", f); break;
      case '\r': fputs("\\r", f); break;
      case '\t': fputs("\\t", f); break;
      default: fprintf(f, "\\u%04x", c);
      }
      i++;
    } else if (c < 0x80) {
      fputc(c, f);
      i++;
    } else {
      size_t len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
      bool ok = len && i + len <= n;
      for (size_t k = 1; ok && k < len; k++)
        ok = (s[i + k] & 0xc0) == 0x80;
      if (ok) {
        fwrite(s + i, 1, len, f);
        i += len;
      } else {
        fputs("\\ufffd", f);
        i++;
      }
    }
  }
  fputc('"', f);
}

static void put_json_str(FILE *f, const char *s)
{
  put_json(f, (const unsigned char *)s, strlen(s));
}

struct sub_state {
  pthread_mutex_t mu;
  long count;   /* printed so far */
};

/* Runs on a library thread; stdout is shared, so one line at a time. */
static int print_msg(const tl_mq_msg *m, void *ctx)
{
  struct sub_state *st = ctx;
  pthread_mutex_lock(&st->mu);
  fputs("{\"subject\":", stdout);
  put_json_str(stdout, m->subject);
  fputs(",\"data\":", stdout);
  put_json(stdout, m->data, m->len);
  fputs(",\"headers\":{", stdout);
  for (size_t i = 0; i < m->nheaders; i++) {
    if (i)
      fputc(',', stdout);
    put_json_str(stdout, m->headers[i].key);
    fputc(':', stdout);
    put_json_str(stdout, m->headers[i].value);
  }
  printf("},\"delivery\":%u}\n", m->delivery);
  fflush(stdout);
  st->count++;
  pthread_mutex_unlock(&st->mu);
  return TL_MQ_ACK;
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
  (void)sig;
  interrupted = 1;
}

static int parse_type(const char *s, tl_mq_type *out)
{
  static const char *const names[] = { "memory", "kafka", "rabbitmq", "nats" };
  for (int i = 0; i < 4; i++)
    if (!strcasecmp(s, names[i])) {
      *out = (tl_mq_type)i;
      return 0;
    }
  return -1;
}

/* trellis mq kafka-mock: a Kafka-protocol cluster for development and
 * tests, reachable by other processes on loopback like a real one. */
static int kafka_mock(int argc, char **argv)
{
  long brokers = 3;
  const char *topic = "events";
  for (int i = 2; i < argc; i++) {
    char *end = NULL;
    if (!strcmp(argv[i], "--brokers") && i + 1 < argc) {
      brokers = strtol(argv[++i], &end, 10);
      if (*end || brokers < 1 || brokers > 16) {
        fprintf(stderr, "trellis mq kafka-mock: --brokers: '%s' is not an integer in [1, 16]\n",
                argv[i]);
        return CLI_USAGE;
      }
    } else if (!strcmp(argv[i], "--topic") && i + 1 < argc) {
      topic = argv[++i];
    } else {
      fprintf(stderr, "trellis mq kafka-mock: unexpected argument '%s'\n", argv[i]);
      usage(stderr);
      return CLI_USAGE;
    }
  }
  char err[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk) {
    fprintf(stderr, "trellis mq kafka-mock: %s\n", err);
    return CLI_FAIL;
  }
  rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, (int)brokers);
  if (!mc || rd_kafka_mock_topic_create(mc, topic, 3, brokers < 3 ? (int)brokers : 3) != 0) {
    fprintf(stderr, "trellis mq kafka-mock: cannot start %ld brokers\n", brokers);
    if (mc) rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return CLI_FAIL;
  }
  struct sigaction sa = { .sa_handler = on_signal };
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
  fflush(stdout);
  while (!interrupted) tl_sleep_us(50000);
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return CLI_OK;
}

/* The "mq" command: argv[0] is "mq". Returns CLI_OK, CLI_FAIL or CLI_USAGE. */
int cli_cmd_mq(int argc, char **argv, const tl_config *cfg)
{
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? CLI_USAGE : CLI_OK;
  }
  if (!strcmp(argv[1], "kafka-mock")) return kafka_mock(argc, argv);
  bool pub = !strcmp(argv[1], "pub");
  if (!pub && strcmp(argv[1], "sub") != 0) {
    fprintf(stderr, "trellis mq: unknown subcommand '%s'\n", argv[1]);
    usage(stderr);
    return CLI_USAGE;
  }
  const char *pos[2] = { NULL, NULL };
  int npos = 0;
  const char *type = NULL, *url = NULL, *group = NULL, *key = NULL;
  long count = 0;
  int64_t timeout_us = 0;
  tl_mq_header headers[TL_MQ_HEADERS_MAX];
  char *header_copies[TL_MQ_HEADERS_MAX];
  size_t nheaders = 0;
  int rc = CLI_OK;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    bool has = i + 1 < argc;
    if (!strcmp(a, "--type") && has) {
      type = argv[++i];
    } else if (!strcmp(a, "--url") && has) {
      url = argv[++i];
    } else if (pub && !strcmp(a, "--key") && has) {
      key = argv[++i];
    } else if (pub && !strcmp(a, "--header") && has) {
      const char *kv = argv[++i];
      const char *eq = strchr(kv, '=');
      if (!eq || eq == kv || nheaders == TL_MQ_HEADERS_MAX - 4) {
        fprintf(stderr, "trellis mq pub: --header '%s': expected KEY=VALUE\n", kv);
        rc = CLI_USAGE;
        goto out;
      }
      char *k = strndup(kv, (size_t)(eq - kv));
      header_copies[nheaders] = k;
      headers[nheaders++] = (tl_mq_header){ k, eq + 1 };
    } else if (!pub && !strcmp(a, "--group") && has) {
      group = argv[++i];
    } else if (!pub && !strcmp(a, "--count") && has) {
      char *end;
      count = strtol(argv[++i], &end, 10);
      if (*end || count < 1) {
        fprintf(stderr, "trellis mq sub: --count: '%s' is not a positive integer\n", argv[i]);
        rc = CLI_USAGE;
        goto out;
      }
    } else if (!pub && !strcmp(a, "--timeout") && has) {
      if (tl_duration_parse(argv[++i], &timeout_us) != 0 || timeout_us <= 0) {
        fprintf(stderr, "trellis mq sub: --timeout: '%s' is not a duration (e.g. 30s)\n",
                argv[i]);
        rc = CLI_USAGE;
        goto out;
      }
    } else if (a[0] == '-' && a[1] == '-') {
      fprintf(stderr, "trellis mq %s: unknown option '%s'\n", argv[1], a);
      usage(stderr);
      rc = CLI_USAGE;
      goto out;
    } else if (npos < (pub ? 2 : 1)) {
      pos[npos++] = a;
    } else {
      fprintf(stderr, "trellis mq %s: unexpected argument '%s'\n", argv[1], a);
      usage(stderr);
      rc = CLI_USAGE;
      goto out;
    }
  }
  if (npos != (pub ? 2 : 1)) {
    usage(stderr);
    rc = CLI_USAGE;
    goto out;
  }
  if (pub ? tl_mq_subject_valid(pos[0]) : tl_mq_pattern_valid(pos[0])) {
    fprintf(stderr, "trellis mq %s: %s\n", argv[1], tl_error_last());
    rc = CLI_USAGE;
    goto out;
  }

  tl_mq_config mc;
  if (tl_mq_config_from(cfg, &mc) != 0) {
    cli_fail("mq", "bad configuration");
    rc = CLI_USAGE;
    goto out;
  }
  if (type && parse_type(type, &mc.type) != 0) {
    fprintf(stderr, "trellis mq: --type: '%s' is not one of memory, kafka, rabbitmq, nats\n",
            type);
    rc = CLI_USAGE;
    goto out;
  }
  if (url) {
    if (mc.type == TL_MQ_KAFKA)
      mc.brokers = url;
    else
      mc.url = url;
  }
  if (mc.type == TL_MQ_MEMORY)
    fprintf(stderr, "trellis mq: note: the memory bus lives inside this process only\n");
  tl_mq *mq;
  if (tl_mq_open(&mq, &mc) != 0) {
    cli_fail("mq", "cannot connect");
    rc = CLI_FAIL;
    goto out;
  }
  if (pub) {
    tl_mq_message m = { .subject = pos[0], .data = pos[1], .len = strlen(pos[1]), .key = key,
                        .headers = headers, .nheaders = nheaders };
    if (tl_mq_publish_msg(mq, &m) != 0) {
      cli_fail("mq pub", "not published");
      rc = CLI_FAIL;
    }
    tl_mq_close(mq);
    goto out;
  }

  struct sub_state st = { .count = 0 };
  pthread_mutex_init(&st.mu, NULL);
  struct sigaction sa = { .sa_handler = on_signal };
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  tl_mq_sub_opts so = { .group = group };
  tl_mq_sub *sub;
  if (tl_mq_subscribe(mq, pos[0], print_msg, &st, &so, &sub) != 0) {
    cli_fail("mq sub", "cannot subscribe");
    tl_mq_close(mq);
    pthread_mutex_destroy(&st.mu);
    rc = CLI_FAIL;
    goto out;
  }
  int64_t deadline = timeout_us ? tl_time_mono_us() + timeout_us : INT64_MAX;
  for (;;) {
    pthread_mutex_lock(&st.mu);
    long got = st.count;
    pthread_mutex_unlock(&st.mu);
    if ((count && got >= count) || interrupted)
      break;
    if (tl_time_mono_us() >= deadline) {
      if (count) {
        fprintf(stderr, "trellis mq sub: timed out after %ld of %ld messages\n", got, count);
        rc = CLI_FAIL;
      }
      break;
    }
    tl_sleep_us(20000);
  }
  tl_mq_unsubscribe(sub);
  tl_mq_close(mq);
  pthread_mutex_destroy(&st.mu);
out:
  for (size_t i = 0; i < nheaders; i++)
    free(header_copies[i]);
  return rc;
}
