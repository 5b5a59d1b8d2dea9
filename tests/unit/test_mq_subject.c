/* Subject grammar, wildcard matching and the pattern translation to AMQP,
 * with a property test: for random patterns and subjects, NATS semantics
 * (our matcher), AMQP topic semantics on the translated pattern, and the
 * Kafka client-side filter agree. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <trellis/trellis.h>
#include <trellis/mq.h>

#include "mq/mq_int.h"

static void valid_subjects(void **state)
{
  (void)state;
  const char *ok[] = { "a", "user.created", "a.b.c.d", "A-1_x.y", "é.ü", "x*", NULL };
  /* "x*" is not ok: a '*' inside a token is rejected too (see below) */
  for (int i = 0; ok[i]; i++) {
    if (!strcmp(ok[i], "x*"))
      continue;
    assert_int_equal(tl_mq_subject_valid(ok[i]), 0);
  }
  char longest[TL_MQ_SUBJECT_MAX + 2];
  memset(longest, 'a', TL_MQ_SUBJECT_MAX);
  longest[TL_MQ_SUBJECT_MAX] = '\0';
  assert_int_equal(tl_mq_subject_valid(longest), 0);
  longest[TL_MQ_SUBJECT_MAX] = 'a';
  longest[TL_MQ_SUBJECT_MAX + 1] = '\0';
  assert_int_equal(tl_mq_subject_valid(longest), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "longer than 255"));
}

static void invalid_subjects_have_clear_errors(void **state)
{
  (void)state;
  struct { const char *s, *msg; } bad[] = {
    { "", "empty" },
    { ".", "empty token" },
    { "a.", "empty token" },
    { ".a", "empty token" },
    { "a..b", "empty token" },
    { "a b", "whitespace" },
    { "a\tb", "whitespace" },
    { "a.\n", "whitespace" },
    { "a.*", "not allowed in a published subject" },
    { "*", "not allowed in a published subject" },
    { "a.>", "not allowed in a published subject" },
    { ">", "not allowed in a published subject" },
    { "a.b*", "not allowed in a published subject" },
    { "a.#", "'#' is not allowed" },
    { "a.#b", "'#' is not allowed" },
    { "$JS.API.x", "reserved" },
    { "_INBOX.abc", "reserved" },
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(tl_mq_subject_valid(bad[i].s), TL_EINVAL);
    if (!strstr(tl_error_last(), bad[i].msg))
      fail_msg("subject '%s': message '%s' lacks '%s'", bad[i].s, tl_error_last(), bad[i].msg);
  }
  assert_int_equal(tl_mq_subject_valid(NULL), TL_EINVAL);
  /* the message names the subject */
  tl_mq_subject_valid("orders..created");
  assert_string_equal(tl_error_last(), "subject 'orders..created': empty token");
}

static void patterns(void **state)
{
  (void)state;
  const char *ok[] = { "a", "*", ">", "a.*", "a.>", "*.b", "*.*", "a.*.c.>", "*.>", NULL };
  for (int i = 0; ok[i]; i++)
    if (tl_mq_pattern_valid(ok[i]) != 0)
      fail_msg("pattern '%s' rejected: %s", ok[i], tl_error_last());
  struct { const char *p, *msg; } bad[] = {
    { "a.>.b", "'>' must be the last token" },
    { ">.a", "'>' must be the last token" },
    { "a*", "must be a whole token" },
    { "a.b>", "must be a whole token" },
    { "a.**", "must be a whole token" },
    { "a..*", "empty token" },
    { "a.*.", "empty token" },
    { "", "empty" },
    { "a .*", "whitespace" },
    { "a.#", "'#' is not allowed" },
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(tl_mq_pattern_valid(bad[i].p), TL_EINVAL);
    if (!strstr(tl_error_last(), bad[i].msg))
      fail_msg("pattern '%s': message '%s' lacks '%s'", bad[i].p, tl_error_last(), bad[i].msg);
  }
}

static void matching(void **state)
{
  (void)state;
  struct { const char *p, *s; bool m; } cases[] = {
    { "a", "a", true },
    { "a", "b", false },
    { "a", "a.b", false },
    { "a.b", "a", false },
    { "a.b", "a.b", true },
    { "a.b", "a.bc", false },
    { "a.bc", "a.b", false },
    { "*", "a", true },
    { "*", "a.b", false },
    { "a.*", "a.b", true },
    { "a.*", "a", false },
    { "a.*", "a.b.c", false },
    { "*.b", "a.b", true },
    { "*.b", "a.c", false },
    { "*.*", "a.b", true },
    { "*.*", "a", false },
    { "a.*.c", "a.b.c", true },
    { "a.*.c", "a.b.d", false },
    { "a.*.c", "a.c", false },
    /* '>' is one or more tokens: a.> never matches a itself */
    { "a.>", "a", false },
    { "a.>", "a.b", true },
    { "a.>", "a.b.c.d", true },
    { "a.>", "b.a", false },
    { "a.>", "ab.c", false },
    { ">", "a", true },
    { ">", "a.b.c", true },
    { "*.>", "a", false },
    { "*.>", "a.b", true },
    { "a.*.>", "a.b", false },
    { "a.*.>", "a.b.c", true },
    { "user.*", "user.created", true },
    { "user.*", "users.created", false },
    { "user.*", "user", false },
    { "user.*", "user.created.v2", false },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    if (tl_mq_subject_match(cases[i].p, cases[i].s) != cases[i].m)
      fail_msg("match('%s', '%s') should be %s", cases[i].p, cases[i].s,
               cases[i].m ? "true" : "false");
  assert_false(tl_mq_subject_match(NULL, "a"));
  assert_false(tl_mq_subject_match("a", NULL));
  /* the explicit-length form only looks at the given bytes */
  assert_true(tl__mq_match("a.b", "a.b.c", 3));
  assert_false(tl__mq_match("a.b.c", "a.b.c", 3));
}

static void amqp_translation(void **state)
{
  (void)state;
  struct { const char *p, *amqp; } cases[] = {
    { "a", "a" },
    { "a.b", "a.b" },
    { "*", "*" },
    { "a.*", "a.*" },
    { "*.b.*", "*.b.*" },
    { ">", "*.#" },
    { "a.>", "a.*.#" },
    { "a.*.>", "a.*.*.#" },
  };
  char buf[300];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int n = tl__mq_pattern_to_amqp(cases[i].p, buf, sizeof buf);
    assert_int_equal(n, (int)strlen(cases[i].amqp));
    assert_string_equal(buf, cases[i].amqp);
  }
  char small[4];
  assert_int_equal(tl__mq_pattern_to_amqp("a.>", small, sizeof small), -1);
}

/* AMQP 0-9-1 topic matching, written from the spec: '*' one word, '#'
 * zero or more words. A reference for the property test. */
static bool amqp_rec(char **p, int np, char **s, int ns)
{
  if (np == 0)
    return ns == 0;
  if (!strcmp(p[0], "#")) {
    for (int k = 0; k <= ns; k++)
      if (amqp_rec(p + 1, np - 1, s + k, ns - k))
        return true;
    return false;
  }
  if (ns == 0)
    return false;
  if (strcmp(p[0], "*") != 0 && strcmp(p[0], s[0]) != 0)
    return false;
  return amqp_rec(p + 1, np - 1, s + 1, ns - 1);
}

static int split(char *text, char **out)
{
  int n = 0;
  for (char *save = NULL, *t = strtok_r(text, ".", &save); t; t = strtok_r(NULL, ".", &save))
    out[n++] = t;
  return n;
}

static bool amqp_match(const char *pattern, const char *subject)
{
  char pb[300], sb[300], *pt[150], *st[150];
  snprintf(pb, sizeof pb, "%s", pattern);
  snprintf(sb, sizeof sb, "%s", subject);
  int np = split(pb, pt), ns = split(sb, st);
  return amqp_rec(pt, np, st, ns);
}

static void amqp_reference_sanity(void **state)
{
  (void)state;
  assert_true(amqp_match("a.#", "a"));     /* the difference we translate away */
  assert_true(amqp_match("a.#", "a.b.c"));
  assert_true(amqp_match("#", "a"));
  assert_true(amqp_match("a.*.#", "a.b"));
  assert_false(amqp_match("a.*.#", "a"));
  assert_true(amqp_match("a.*", "a.b"));
  assert_false(amqp_match("a.*", "a.b.c"));
  assert_true(amqp_match("*.#", "x"));
  assert_false(amqp_match("a.b", "a.c"));
}

static const char *words[] = { "a", "b", "c" };

static void random_subject(char *out, int tokens)
{
  out[0] = '\0';
  for (int i = 0; i < tokens; i++) {
    if (i)
      strcat(out, ".");
    strcat(out, words[tl_rand64() % 3]);
  }
}

static void random_pattern(char *out, int tokens)
{
  out[0] = '\0';
  for (int i = 0; i < tokens; i++) {
    if (i)
      strcat(out, ".");
    unsigned r = (unsigned)(tl_rand64() % 6);
    if (i == tokens - 1 && r == 5)
      strcat(out, ">");
    else if (r >= 4)
      strcat(out, "*");
    else
      strcat(out, words[r % 3]);
  }
}

static void property_backends_agree(void **state)
{
  (void)state;
  char p[64], s[64], amqp[80];
  int matched = 0, total = 0;
  for (int i = 0; i < 20000; i++) {
    random_pattern(p, 1 + (int)(tl_rand64() % 4));
    random_subject(s, 1 + (int)(tl_rand64() % 5));
    assert_int_equal(tl_mq_pattern_valid(p), 0);
    assert_int_equal(tl_mq_subject_valid(s), 0);
    bool nats = tl_mq_subject_match(p, s);
    assert_true(tl__mq_pattern_to_amqp(p, amqp, sizeof amqp) > 0);
    bool rabbit = amqp_match(amqp, s);
    if (nats != rabbit)
      fail_msg("pattern '%s' (amqp '%s') subject '%s': nats %d amqp %d", p, amqp, s, nats,
               rabbit);
    matched += nats;
    total++;
  }
  /* the generator really exercises both outcomes */
  assert_true(matched > total / 20);
  assert_true(matched < total - total / 20);
}

static void dead_letter_subject(void **state)
{
  (void)state;
  tl_mq *mq;
  tl_mq_config mc = { .type = TL_MQ_MEMORY, .url = "memory://subject-test",
                      .dead_letter_prefix = "app" };
  assert_int_equal(tl_mq_open(&mq, &mc), 0);
  char buf[300];
  assert_true(tl__mq_dlq_subject(mq, "user.created", buf, sizeof buf) > 0);
  assert_string_equal(buf, "app.dlq.user.created");
  assert_int_equal(tl_mq_close(mq), 0);
  mc.dead_letter_prefix = "bad..prefix";
  assert_int_equal(tl_mq_open(&mq, &mc), TL_EINVAL);
  assert_null(mq);
}

static void traceparent_roundtrip(void **state)
{
  (void)state;
  uint8_t t[16], sp[8], fl;
  assert_int_equal(tl__mq_parse_traceparent(
                       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", t, sp, &fl),
                   0);
  char out[56];
  tl__mq_fmt_traceparent(t, sp, fl, out);
  assert_string_equal(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  assert_int_equal(tl__mq_parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                                            t, sp, &fl), -1);
  assert_int_equal(tl__mq_parse_traceparent("garbage", t, sp, &fl), -1);
}

static void config_from_env(void **state)
{
  (void)state;
  tl_config *cfg;
  assert_int_equal(tl_config_new(&cfg), 0);
  tl_mq_config mc;
  assert_int_equal(tl_mq_config_from(cfg, &mc), 0);
  assert_int_equal(mc.type, TL_MQ_MEMORY);

  tl_config_set(cfg, "MESSAGE_QUEUE_TYPE", "kafak");
  assert_int_equal(tl_mq_config_from(cfg, &mc), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "MESSAGE_QUEUE_TYPE"));
  assert_non_null(strstr(tl_error_last(), "kafak"));

  tl_config_set(cfg, "MESSAGE_QUEUE_TYPE", "Kafka");
  tl_config_set(cfg, "KAFKA_BROKERS", " , ");
  assert_int_equal(tl_mq_config_from(cfg, &mc), TL_EINVAL);
  assert_string_equal(tl_error_last(), "KAFKA_BROKERS: empty list");
  tl_config_set(cfg, "KAFKA_BROKERS", "k1:9092,k2");
  assert_int_equal(tl_mq_config_from(cfg, &mc), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "'k2' is not host:port"));
  tl_config_set(cfg, "KAFKA_BROKERS", "mock://3");
  assert_int_equal(tl_mq_config_from(cfg, &mc), 0);
  assert_int_equal(mc.type, TL_MQ_KAFKA);
  assert_string_equal(mc.brokers, "mock://3");
  assert_string_equal(mc.topic, "events");
  tl_config_set(cfg, "KAFKA_TOPIC", "bad topic");
  assert_int_equal(tl_mq_config_from(cfg, &mc), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "KAFKA_TOPIC"));
  tl_config_set(cfg, "KAFKA_TOPIC", "events");

  tl_config_set(cfg, "MESSAGE_QUEUE_TYPE", "rabbitmq");
  tl_config_set(cfg, "RABBITMQ_URL", "http://guest:secret@h/");
  assert_int_equal(tl_mq_config_from(cfg, &mc), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "RABBITMQ_URL"));
  assert_null(strstr(tl_error_last(), "secret"));
  tl_config_set(cfg, "RABBITMQ_URL", "amqp://guest:secret@h:5672/");
  assert_int_equal(tl_mq_config_from(cfg, &mc), 0);
  assert_string_equal(mc.exchange, "trellis");

  tl_config_set(cfg, "MESSAGE_QUEUE_TYPE", "nats");
  tl_config_set(cfg, "NATS_URL", "nats://127.0.0.1:4222");
  tl_config_set(cfg, "NATS_JETSTREAM", "no");
  assert_int_equal(tl_mq_config_from(cfg, &mc), 0);
  assert_true(mc.nats_core);
  tl_config_set(cfg, "NATS_STREAM", "a.b");
  assert_int_equal(tl_mq_config_from(cfg, &mc), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "NATS_STREAM"));
  tl_config_set(cfg, "NATS_STREAM", "EV");

  tl_config_set(cfg, "MQ_PUBLISH_TIMEOUT", "5");
  assert_int_equal(tl_mq_config_from(cfg, &mc), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "MQ_PUBLISH_TIMEOUT"));
  tl_config_set(cfg, "MQ_PUBLISH_TIMEOUT", "250ms");
  tl_config_set(cfg, "MQ_DEAD_LETTER_PREFIX", "a b");
  assert_int_equal(tl_mq_config_from(cfg, &mc), TL_EINVAL);
  assert_non_null(strstr(tl_error_last(), "MQ_DEAD_LETTER_PREFIX"));
  tl_config_set(cfg, "MQ_DEAD_LETTER_PREFIX", "svc");
  assert_int_equal(tl_mq_config_from(cfg, &mc), 0);
  assert_int_equal(mc.publish_timeout_us, 250000);
  assert_string_equal(mc.dead_letter_prefix, "svc");
  tl_config_free(cfg);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(valid_subjects),
    cmocka_unit_test(invalid_subjects_have_clear_errors),
    cmocka_unit_test(patterns),
    cmocka_unit_test(matching),
    cmocka_unit_test(amqp_translation),
    cmocka_unit_test(amqp_reference_sanity),
    cmocka_unit_test(property_backends_agree),
    cmocka_unit_test(dead_letter_subject),
    cmocka_unit_test(traceparent_roundtrip),
    cmocka_unit_test(config_from_env),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
