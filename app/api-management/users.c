/* The users domain: an event-sourced aggregate (stream "user-<uuid>"),
 * its commands with their validation, the uniqueness of emails among
 * active users, the read model kept by a projection, and the queries.
 *
 * Events: UserCreated {id, name, email}, UserRenamed {name},
 * EmailChanged {email}, UserDeactivated {}.
 *
 * Emails are unique among active users through the table user_emails
 * (email primary key), written in the transaction that appends the
 * events: two writers racing for one address cannot both commit. */
#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"

#define NAME_MAX_CHARS 100
#define EMAIL_MAX 254

typedef struct users {
  app *a;
  /* An invalidation failed (the cache was down): reads skip the cache
   * until every user key has been dropped from it. */
  atomic_bool cache_dirty;
} users;

static users the_users;

/* ---- the service's tables ------------------------------------------------ */

#define MYSQL_TABLE " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

static const tl_migration migrations[] = {
  { .version = 1, .name = "user emails",
    .sql = "CREATE TABLE user_emails (email VARCHAR(254) PRIMARY KEY, "
           "user_id VARCHAR(36) NOT NULL)",
    .sql_mysql = "CREATE TABLE user_emails (email VARCHAR(254) PRIMARY KEY, "
                 "user_id VARCHAR(36) NOT NULL)" MYSQL_TABLE },
  { .version = 2, .name = "user emails by user",
    .sql = "CREATE INDEX user_emails_user ON user_emails (user_id)" },
  { .version = 3, .name = "welcome emails sent",
    .sql = "CREATE TABLE welcome_emails (event_id VARCHAR(36) PRIMARY KEY, "
           "user_id VARCHAR(36) NOT NULL, sent_us BIGINT NOT NULL)",
    .sql_mysql = "CREATE TABLE welcome_emails (event_id VARCHAR(36) PRIMARY KEY, "
                 "user_id VARCHAR(36) NOT NULL, sent_us BIGINT NOT NULL)" MYSQL_TABLE },
};

int users_migrate(tl_db *db)
{
  int rc = tl_db_migrations_register("api_management", migrations,
                                     sizeof migrations / sizeof migrations[0]);
  return rc ? rc : tl_db_migrate(db, "api_management", NULL);
}

/* ---- validation -------------------------------------------------------------- */

/* Number of UTF-8 characters of valid UTF-8 `s` (jansson checked it). */
static size_t utf8_chars(const char *s)
{
  size_t n = 0;
  for (; *s; s++)
    n += ((unsigned char)*s & 0xC0) != 0x80;
  return n;
}

static const char *json_kind(const json_t *v)
{
  switch (json_typeof(v)) {
  case JSON_OBJECT: return "an object";
  case JSON_ARRAY: return "an array";
  case JSON_STRING: return "a string";
  case JSON_INTEGER: return "an integer";
  case JSON_REAL: return "a number";
  case JSON_TRUE:
  case JSON_FALSE: return "a boolean";
  default: return "null";
  }
}

static int check_name(const json_t *v)
{
  if (!json_is_string(v))
    return tl_error_set(TL_EINVAL, "field 'name': expected a string, got %s", json_kind(v));
  const char *s = json_string_value(v);
  size_t n = utf8_chars(s);
  if (json_string_length(v) != strlen(s))
    return tl_error_set(TL_EINVAL, "field 'name': contains a NUL character");
  if (n < 1 || n > NAME_MAX_CHARS)
    return tl_error_set(TL_EINVAL, "field 'name': expected 1 to %d characters, got %zu",
                        NAME_MAX_CHARS, n);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p < 0x20 || *p == 0x7f)
      return tl_error_set(TL_EINVAL, "field 'name': contains a control character (0x%02x)", *p);
  if (isspace((unsigned char)s[0]) || isspace((unsigned char)s[strlen(s) - 1]))
    return tl_error_set(TL_EINVAL, "field 'name': has leading or trailing spaces");
  return 0;
}

/* A practical address check: local@domain, no spaces or control
 * characters, a dot inside the domain, lengths as RFC 5321 allows. */
static int check_email(const json_t *v)
{
  if (!json_is_string(v))
    return tl_error_set(TL_EINVAL, "field 'email': expected a string, got %s", json_kind(v));
  const char *s = json_string_value(v);
  size_t len = strlen(s);
  const char *at = strchr(s, '@');
  const char *bad = "expected an address such as name@example.com";
  if (len != json_string_length(v) || len > EMAIL_MAX)
    return tl_error_set(TL_EINVAL, "field 'email': longer than %d bytes", EMAIL_MAX);
  if (!at || at == s || at - s > 64 || strchr(at + 1, '@'))
    return tl_error_set(TL_EINVAL, "field 'email': '%.80s' is not an email address (%s)", s, bad);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p <= 0x20 || *p == 0x7f || *p == '<' || *p == '>' || *p == ',' || *p == ';')
      return tl_error_set(TL_EINVAL, "field 'email': '%.80s' is not an email address (%s)", s,
                          bad);
  const char *dom = at + 1, *dot = strchr(dom, '.');
  if (!dot || dom[0] == '.' || s[len - 1] == '.' || strstr(dom, ".."))
    return tl_error_set(TL_EINVAL, "field 'email': '%.80s' is not an email address (%s)", s, bad);
  return 0;
}

static int check_id(const json_t *v)
{
  uint8_t b[16];
  if (!json_is_string(v) || tl_uuid_parse(json_string_value(v), b) != 0)
    return tl_error_set(TL_EINVAL, "field 'id': expected a UUID");
  return 0;
}

static int check_version(const json_t *v)
{
  if (!json_is_integer(v) || json_integer_value(v) < 0)
    return tl_error_set(TL_EINVAL, "field 'expected_version': expected an integer >= 0, got %s",
                        json_kind(v));
  return 0;
}

typedef int (*field_check)(const json_t *v);

typedef struct field_spec {
  const char *name;
  field_check check;
  bool required;
} field_spec;

typedef struct command_spec {
  const char *command;
  field_spec fields[4];
  bool name_or_email; /* at least one of the two */
} command_spec;

/* The commands' fields; users_register pairs each with its handler. */
static const command_spec specs[] = {
  { "CreateUser", { { "name", check_name, true }, { "email", check_email, true } }, false },
  { "UpdateUser", { { "id", check_id, true }, { "name", check_name, false },
                    { "email", check_email, false }, { "expected_version", check_version, false } },
    true },
  { "RenameUser", { { "id", check_id, true }, { "name", check_name, true },
                    { "expected_version", check_version, false } }, false },
  { "ChangeEmail", { { "id", check_id, true }, { "email", check_email, true },
                     { "expected_version", check_version, false } }, false },
  { "DeactivateUser", { { "id", check_id, true }, { "expected_version", check_version, false } },
    false },
};

static int validate(const json_t *payload, void *ctx)
{
  const command_spec *sp = ctx;
  if (!json_is_object(payload))
    return tl_error_set(TL_EINVAL, "body: expected a JSON object, got %s", json_kind(payload));
  const char *key;
  json_t *v;
  json_object_foreach((json_t *)payload, key, v) {
    const field_spec *f = NULL;
    for (size_t i = 0; i < 4 && sp->fields[i].name && !f; i++)
      if (!strcmp(sp->fields[i].name, key)) f = &sp->fields[i];
    if (!f) {
      char expected[128] = "";
      for (size_t i = 0; i < 4 && sp->fields[i].name; i++)
        snprintf(expected + strlen(expected), sizeof expected - strlen(expected), "%s'%s'",
                 i ? ", " : "", sp->fields[i].name);
      return tl_error_set(TL_EINVAL, "unknown field '%.64s' (expected %s)", key, expected);
    }
    int rc = f->check(v);
    if (rc) return rc;
  }
  for (size_t i = 0; i < 4 && sp->fields[i].name; i++)
    if (sp->fields[i].required && !json_object_get(payload, sp->fields[i].name))
      return tl_error_set(TL_EINVAL, "field '%s' is required", sp->fields[i].name);
  if (sp->name_or_email && !json_object_get(payload, "name") && !json_object_get(payload, "email"))
    return tl_error_set(TL_EINVAL, "expected at least one of 'name', 'email'");
  return 0;
}

/* Emails compare without case: stored and reserved in lower case. */
static char *email_normal(const char *s)
{
  char *e = strdup(s);
  for (char *p = e; p && *p; p++) *p = (char)tolower((unsigned char)*p);
  return e;
}

/* ---- the aggregate -------------------------------------------------------------- */

static const char *str(const json_t *o, const char *k)
{
  return json_string_value(json_object_get(o, k));
}

static int user_apply(json_t *st, const tl_event *ev, void *ctx)
{
  (void)ctx;
  json_t *d = json_loads(ev->data, 0, NULL);
  if (!d) return tl_error_set(TL_EPROTO, "event %s: data is not JSON", ev->id);
  const char *t = ev->event_type;
  if (!strcmp(t, "UserCreated")) {
    json_object_set(st, "id", json_object_get(d, "id"));
    json_object_set(st, "name", json_object_get(d, "name"));
    json_object_set(st, "email", json_object_get(d, "email"));
    json_object_set_new(st, "active", json_true());
    json_object_set_new(st, "created_us", json_integer(ev->timestamp_us));
  } else if (!strcmp(t, "UserRenamed")) {
    json_object_set(st, "name", json_object_get(d, "name"));
  } else if (!strcmp(t, "EmailChanged")) {
    json_object_set(st, "email", json_object_get(d, "email"));
  } else if (!strcmp(t, "UserDeactivated")) {
    json_object_set_new(st, "active", json_false());
  }
  json_object_set_new(st, "updated_us", json_integer(ev->timestamp_us));
  json_decref(d);
  return 0;
}

static const tl_aggregate_def user_def = {
  .apply = user_apply, .snapshot_every = 50, .state_schema = 1, .max_attempts = 5,
};

static json_t *time_json(int64_t us)
{
  char buf[40];
  tl_time_format(us, 6, buf, sizeof buf);
  return json_string(buf);
}

/* The API's representation of a user. */
static json_t *user_json(const char *id, const char *name, const char *email, bool active,
                         int64_t version, int64_t created_us, int64_t updated_us)
{
  json_t *o = json_object();
  json_object_set_new(o, "id", json_string(id));
  json_object_set_new(o, "name", json_string(name));
  json_object_set_new(o, "email", json_string(email));
  json_object_set_new(o, "active", json_boolean(active));
  json_object_set_new(o, "version", json_integer(version));
  json_object_set_new(o, "created_at", time_json(created_us));
  json_object_set_new(o, "updated_at", time_json(updated_us));
  return o;
}

static json_t *state_json(const json_t *st, int64_t version)
{
  return user_json(str(st, "id"), str(st, "name"), str(st, "email"),
                   json_is_true(json_object_get(st, "active")), version,
                   json_integer_value(json_object_get(st, "created_us")),
                   json_integer_value(json_object_get(st, "updated_us")));
}

static int decide_create(const json_t *st, int64_t version, const json_t *cmd,
                         tl_aggregate_emit *em, void *ctx)
{
  (void)st;
  if (version != 0) return tl_error_set(TL_ECONFLICT, "user '%s' exists already", (char *)ctx);
  char *email = email_normal(str(cmd, "email"));
  json_t *d = json_pack("{s:s, s:O, s:s}", "id", (char *)ctx, "name", json_object_get(cmd, "name"),
                        "email", email ? email : "");
  free(email);
  return tl_aggregate_emit_event(em, "UserCreated", d);
}

static int require_exists(const json_t *st, int64_t version, const json_t *cmd)
{
  if (version == 0)
    return tl_error_set(TL_ENOTFOUND, "user '%s' not found", str(cmd, "id"));
  return 0;
}

static int decide_update(const json_t *st, int64_t version, const json_t *cmd,
                         tl_aggregate_emit *em, void *ctx)
{
  (void)ctx;
  int rc = require_exists(st, version, cmd);
  if (rc) return rc;
  if (!json_is_true(json_object_get(st, "active")))
    return tl_error_set(TL_ESTATE, "user '%s' is deactivated", str(cmd, "id"));
  const char *name = str(cmd, "name");
  if (name && strcmp(name, str(st, "name")) != 0 &&
      (rc = tl_aggregate_emit_event(em, "UserRenamed", json_pack("{s:s}", "name", name))) != 0)
    return rc;
  if (str(cmd, "email")) {
    char *email = email_normal(str(cmd, "email"));
    if (!email) return tl_error_set(TL_ENOMEM, "out of memory");
    if (strcmp(email, str(st, "email")) != 0)
      rc = tl_aggregate_emit_event(em, "EmailChanged", json_pack("{s:s}", "email", email));
    free(email);
  }
  return rc;
}

static int decide_deactivate(const json_t *st, int64_t version, const json_t *cmd,
                             tl_aggregate_emit *em, void *ctx)
{
  (void)ctx;
  int rc = require_exists(st, version, cmd);
  if (rc || !json_is_true(json_object_get(st, "active"))) return rc; /* already: no-op */
  return tl_aggregate_emit_event(em, "UserDeactivated", json_object());
}

/* What an event does to the user's reserved address: gives up the one it
 * had (drop) and/or takes the one in its data (add). */
static void email_effect(const char *type, bool *drop, bool *add)
{
  *add = !strcmp(type, "UserCreated") || !strcmp(type, "EmailChanged");
  *drop = !strcmp(type, "EmailChanged") || !strcmp(type, "UserDeactivated");
}

/* In the append's transaction: keep user_emails in step with the events,
 * so that an address taken by another active user fails the whole
 * command. */
static int reserve_emails(tl_tx *tx, const json_t *st, const tl_event *ev, size_t n, void *ctx)
{
  (void)ctx;
  const char *user = strchr(ev[0].aggregate_id, '-') + 1;
  for (size_t i = 0; i < n; i++) {
    bool add, drop;
    email_effect(ev[i].event_type, &drop, &add);
    int rc = 0;
    if (drop)
      rc = tl_tx_exec(tx, NULL, "DELETE FROM user_emails WHERE user_id = $1", TL_ARGS(tl_text(user)));
    if (rc == 0 && add) {
      json_t *d = json_loads(ev[i].data, 0, NULL);
      const char *email = str(d, "email");
      rc = tl_tx_exec(tx, NULL, "INSERT INTO user_emails (email, user_id) VALUES ($1, $2)",
                      TL_ARGS(tl_text(email), tl_text(user)));
      if (rc == TL_ECONFLICT)
        rc = tl_error_set(TL_ECONSTRAINT, "field 'email': '%.80s' is already in use", email);
      json_decref(d);
    }
    if (rc) return rc;
  }
  (void)st;
  return 0;
}

/* reserve_emails for a group commit's batch: on PostgreSQL one DELETE
 * (addresses given up) and one INSERT for the whole batch; a decision
 * whose address is taken is refused, the others stay. Elsewhere, or when
 * a user has two decisions in the batch, one decision at a time (the
 * first refusal ends the call: the batch runs again without it). */
static int reserve_emails_batch(tl_tx *tx, tl_aggregate_tx_item *it, size_t n, void *ctx)
{
  bool one_by_one = tl_db_dialect_of(the_users.a->db) != TL_DB_POSTGRES;
  for (size_t i = 0; i < n && !one_by_one; i++)
    for (size_t j = 0; j < i && !one_by_one; j++)
      one_by_one = strcmp(it[i].stream, it[j].stream) == 0;
  if (one_by_one) {
    for (size_t i = 0; i < n; i++) {
      int rc = reserve_emails(tx, it[i].state, it[i].events, it[i].n, ctx);
      if (rc) {
        it[i].rc = rc;
        snprintf(it[i].error, sizeof it[i].error, "%s", tl_error_last());
        break;
      }
    }
    return 0;
  }
  json_t *drops = json_array(), *adds = json_array();
  const char **email_of = calloc(n, sizeof *email_of);
  json_t **data = calloc(n, sizeof *data);
  int rc = drops && adds && email_of && data ? 0 : tl_error_set(TL_ENOMEM, "out of memory");
  for (size_t i = 0; i < n && rc == 0; i++) {
    const char *user = strchr(it[i].stream, '-') + 1;
    for (size_t e = 0; e < it[i].n; e++) {
      bool add, drop;
      email_effect(it[i].events[e].event_type, &drop, &add);
      if (drop)
        json_array_append_new(drops, json_string(user));
      if (add) {
        json_decref(data[i]);
        data[i] = json_loads(it[i].events[e].data, 0, NULL);
        email_of[i] = str(data[i], "email");
      }
    }
    if (email_of[i])
      json_array_append_new(adds, json_pack("{s:s, s:s}", "email", email_of[i], "user_id", user));
  }
  char *dtext = rc ? NULL : json_dumps(drops, JSON_COMPACT);
  char *atext = rc ? NULL : json_dumps(adds, JSON_COMPACT);
  if (rc == 0 && json_array_size(drops))
    rc = tl_tx_exec(tx, NULL, "DELETE FROM user_emails WHERE user_id IN "
                              "(SELECT json_array_elements_text($1::json))", TL_ARGS(tl_text(dtext)));
  tl_rows *r = NULL;
  if (rc == 0 && json_array_size(adds))
    rc = tl_tx_query(tx, &r, "INSERT INTO user_emails (email, user_id) SELECT x.email, x.user_id "
                             "FROM json_to_recordset($1::json) AS x (email text, user_id text) "
                             "ON CONFLICT DO NOTHING RETURNING user_id", TL_ARGS(tl_text(atext)));
  /* Who got an address: the others are refused. */
  bool *got = calloc(n ? n : 1, sizeof *got);
  if (rc == 0 && !got) rc = tl_error_set(TL_ENOMEM, "out of memory");
  while (rc == 0 && r && (rc = tl_rows_next(r)) == 1) {
    const char *user;
    size_t len;
    rc = tl_rows_text(r, 0, &user, &len);
    for (size_t i = 0; i < n && rc == 0; i++)
      if (strcmp(strchr(it[i].stream, '-') + 1, user) == 0) got[i] = true;
  }
  tl_rows_free(r);
  for (size_t i = 0; i < n && rc == 0; i++)
    if (email_of[i] && !got[i]) {
      it[i].rc = TL_ECONSTRAINT;
      snprintf(it[i].error, sizeof it[i].error, "field 'email': '%.80s' is already in use",
               email_of[i]);
    }
  for (size_t i = 0; i < n && data; i++) json_decref(data[i]);
  free(got);
  free(data);
  free(email_of);
  free(dtext);
  free(atext);
  json_decref(drops);
  json_decref(adds);
  return rc;
}

/* Metadata of the events a request causes: its request id as the
 * correlation id, and its trace (a child span of the caller's, or a new
 * trace) so the relay, the subscribers and the jobs log the same trace id. */
static char *request_metadata(void)
{
  char trace[33], span[17], tp[64];
  const char *tid = tl_log_context_trace_id();
  uint8_t rnd[24];
  tl_random_bytes(rnd, sizeof rnd);
  if (tid && strlen(tid) == 32) {
    snprintf(trace, sizeof trace, "%s", tid);
  } else {
    for (int i = 0; i < 16; i++) snprintf(trace + 2 * i, 3, "%02x", rnd[i]);
    tl_log_context_set(tl_log_context_request_id(), trace);
  }
  for (int i = 0; i < 8; i++) snprintf(span + 2 * i, 3, "%02x", rnd[16 + i]);
  snprintf(tp, sizeof tp, "00-%s-%s-01", trace, span);
  json_t *m = json_object();
  json_object_set_new(m, "traceparent", json_string(tp));
  const char *rid = tl_log_context_request_id();
  if (rid && *rid) json_object_set_new(m, "correlation_id", json_string(rid));
  char *text = json_dumps(m, JSON_COMPACT);
  json_decref(m);
  return text;
}

/* Run a decision on stream user-<id> and answer with the new state. */
static int execute(const char *id, const json_t *cmd, tl_aggregate_decide decide, bool new_stream,
                   json_t **result)
{
  char stream[64];
  snprintf(stream, sizeof stream, "user-%s", id);
  char *meta = request_metadata();
  json_t *st = NULL, *ev = json_object_get(cmd, "expected_version");
  int64_t v = 0;
  tl_aggregate_exec_opts o = { .metadata = meta, .in_tx = reserve_emails,
                               .in_tx_batch = reserve_emails_batch, .state_out = &st,
                               .has_expected = ev != NULL, .new_stream = new_stream,
                               .expected_version = json_integer_value(ev),
                               .group = the_users.a->group };
  int rc = tl_aggregate_execute_opts(the_users.a->es, &user_def, stream, cmd, decide, (void *)id,
                                     &o, &v);
  free(meta);
  if (rc == 0) *result = state_json(st, v);
  json_decref(st);
  return rc;
}

static int cmd_create(const json_t *p, json_t **result, void *ctx)
{
  (void)ctx;
  char id[TL_UUID_STRLEN];
  tl_uuid7(id);
  return execute(id, p, decide_create, true, result);
}

static int cmd_update(const json_t *p, json_t **result, void *ctx)
{
  (void)ctx;
  return execute(str(p, "id"), p, decide_update, false, result);
}

static int cmd_deactivate(const json_t *p, json_t **result, void *ctx)
{
  (void)ctx;
  return execute(str(p, "id"), p, decide_deactivate, false, result);
}

/* ---- the cache -------------------------------------------------------------------- */

/* Users are cached as "user:<id>" with the read model's version, so a
 * late fill of an older row cannot replace a newer one; the projection
 * invalidates a user's key (leaving a version fence) in the step that
 * changes its row. */
static void cache_key(const char *id, char key[64])
{
  snprintf(key, 64, "user:%s", id);
}

/* After failed invalidations: drop every user key, then trust the cache
 * again. True when the cache can be used. */
static bool cache_usable(void)
{
  tl_cache *c = the_users.a->cache;
  if (!c) return false;
  if (!atomic_load(&the_users.cache_dirty)) return true;
  if (tl_cache_breaker_state(c) == TL_BREAKER_OPEN ||
      tl_cache_delete_prefix(c, "user:", NULL) != 0)
    return false;
  atomic_store(&the_users.cache_dirty, false);
  tl_log(TL_LOG_INFO, "cache: dropped every user key after missed invalidations");
  return true;
}

/* The projection changed user `id` to `version`. A failure (the cache is
 * down) does not stop the projection: the cache is marked dirty instead,
 * and reads bypass it until cache_usable() has cleaned it. */
static void cache_invalidate(const char *id, int64_t version)
{
  tl_cache *c = the_users.a->cache;
  char key[64];
  if (!c) return;
  cache_key(id, key);
  if (tl_cache_invalidate(c, key, version) != 0 && !atomic_exchange(&the_users.cache_dirty, true))
    tl_log(TL_LOG_WARN, "cache: invalidation failed; reading users from the database until the "
                        "cache answers again", TL_F_STR("error", tl_error_last()));
}

/* Another replica's change, heard on the message queue: drop the user
 * from this process's layer (the shared backend has it already). */
static int on_user_event(const tl_mq_msg *msg, void *ctx)
{
  (void)ctx;
  const char *stream = tl_mq_msg_header(msg, "stream"), *v = tl_mq_msg_header(msg, "stream-version");
  if (stream && !strncmp(stream, "user-", 5) && v) {
    char key[64];
    cache_key(stream + 5, key);
    tl_cache_drop_local(the_users.a->cache, key, strtoll(v, NULL, 10));
  }
  return TL_MQ_ACK;
}

int users_cache_follow(app *a)
{
  if (!a->cache || a->s.mq.type == TL_MQ_MEMORY) return 0;
  return tl_mq_subscribe(a->mq, "user.>", on_user_event, a, &(tl_mq_sub_opts){ .concurrency = 1 },
                         &a->cache_sub);
}

/* ---- the read model ---------------------------------------------------------------- */

static const char *const rm_tables[] = { "users" };

static int rm_create(tl_tx *tx, const tl_projection_tables *t, void *ctx)
{
  (void)ctx;
  const char *u = tl_projection_table(t, "users");
  bool my = tl_db_dialect_of(the_users.a->db) == TL_DB_MYSQL;
  char sql[600];
  snprintf(sql, sizeof sql,
           "CREATE TABLE %s (id VARCHAR(36) PRIMARY KEY, name VARCHAR(400) NOT NULL, "
           "email VARCHAR(254) NOT NULL, active SMALLINT NOT NULL, version BIGINT NOT NULL, "
           "created_us BIGINT NOT NULL, updated_us BIGINT NOT NULL)%s", u, my ? MYSQL_TABLE : "");
  int rc = tl_tx_exec(tx, NULL, sql, TL_NOARGS);
  snprintf(sql, sizeof sql, "CREATE INDEX %s_active ON %s (active, id)", u, u);
  return rc ? rc : tl_tx_exec(tx, NULL, sql, TL_NOARGS);
}

static int rm_handle(const tl_event *ev, tl_tx *tx, const tl_projection_tables *t, void *ctx)
{
  (void)ctx;
  const char *u = tl_projection_table(t, "users"), *id = strchr(ev->aggregate_id, '-') + 1;
  const char *type = ev->event_type;
  json_t *d = json_loads(ev->data, 0, NULL);
  char sql[300];
  int rc = 0;
  if (!strcmp(type, "UserCreated")) {
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, name, email, active, version, created_us, "
                              "updated_us) VALUES ($1, $2, $3, 1, $4, $5, $5)", u);
    rc = tl_tx_exec(tx, NULL, sql, TL_ARGS(tl_text(id), tl_text(str(d, "name")),
                                           tl_text(str(d, "email")), tl_int(ev->version),
                                           tl_int(ev->timestamp_us)));
  } else {
    const char *set = "", *val = NULL;
    if (!strcmp(type, "UserRenamed")) set = "name = $4, ", val = str(d, "name");
    else if (!strcmp(type, "EmailChanged")) set = "email = $4, ", val = str(d, "email");
    else if (!strcmp(type, "UserDeactivated")) set = "active = 0, ";
    snprintf(sql, sizeof sql, "UPDATE %s SET %sversion = $1, updated_us = $2 WHERE id = $3", u, set);
    tl_value args[] = { tl_int(ev->version), tl_int(ev->timestamp_us), tl_text(id), tl_text(val) };
    rc = tl_tx_exec(tx, NULL, sql, args, val ? 4 : 3);
  }
  json_decref(d);
  if (rc == 0) cache_invalidate(id, ev->version);
  return rc;
}

int users_projection_start(app *a)
{
  tl_projection_def def = { .name = "users", .table_prefix = "rm", .tables = rm_tables,
                            .ntables = 1, .filter = { .category = "user" }, .create = rm_create,
                            .handle = rm_handle };
  return tl_projection_start(a->es, &def, &a->users_projection);
}

/* ---- queries ------------------------------------------------------------------------- */

#define USER_COLUMNS "id, name, email, active, version, created_us, updated_us"

static json_t *row_json(tl_rows *r)
{
  const char *id, *name, *email;
  size_t l;
  int64_t active, version, created, updated;
  tl_rows_text(r, 0, &id, &l);
  tl_rows_text(r, 1, &name, &l);
  tl_rows_text(r, 2, &email, &l);
  tl_rows_int(r, 3, &active);
  tl_rows_int(r, 4, &version);
  tl_rows_int(r, 5, &created);
  tl_rows_int(r, 6, &updated);
  return user_json(id, name, email, active != 0, version, created, updated);
}

/* The user's read-model row, or TL_ENOTFOUND. */
static int read_user(const char *id, json_t **out)
{
  tl_rows *r;
  int rc = tl_db_query_ro(the_users.a->db, &r, "SELECT " USER_COLUMNS " FROM rm_users WHERE id = $1",
                          TL_ARGS(tl_text(id)));
  if (rc) return rc;
  rc = tl_rows_next(r);
  if (rc == 1) {
    *out = row_json(r);
    rc = 0;
  } else if (rc == 0) {
    rc = tl_error_set(TL_ENOTFOUND, "user '%s' not found", id);
  }
  tl_rows_free(r);
  return rc;
}

static int load_user(void *ctx, const char *key, tl_cache_fill *fill)
{
  (void)key;
  json_t *u = NULL;
  int rc = read_user(ctx, &u);
  if (rc) return rc; /* TL_ENOTFOUND is cached briefly (negative TTL) */
  char *text = json_dumps(u, JSON_COMPACT);
  rc = text ? tl_cache_fill_value(fill, text, strlen(text),
                                  json_integer_value(json_object_get(u, "version")))
            : tl_error_set(TL_ENOMEM, "out of memory");
  free(text);
  json_decref(u);
  return rc;
}

/* The user from the cache (filled from the read model on a miss) when it
 * is at least at `min`: 0, TL_ENOTFOUND (no such user, and min is 0), or
 * 1 when the caller must read the read model itself. */
static int cached_user(const char *id, int64_t min, json_t **out)
{
  if (!cache_usable()) return 1;
  char key[64];
  cache_key(id, key);
  tl_cache_val v;
  int rc = tl_cache_get_or_load(the_users.a->cache, key, 0, load_user, (void *)id, &v);
  if (rc == TL_ENOTFOUND && min <= 0) return rc;
  if (rc != 0) return 1;
  if (v.version >= min) *out = json_loadb(v.data, v.len, 0, NULL);
  tl_free(v.data);
  return *out ? 0 : 1;
}

/* GetUser {id, min_version?}: from the cache when it has the user at
 * min_version or later; else from the read model, waiting (up to
 * MIN_VERSION_TIMEOUT) until it has caught up to min_version. */
static int q_get(const json_t *p, json_t **result, void *ctx)
{
  (void)ctx;
  const char *id = str(p, "id");
  int64_t min = json_integer_value(json_object_get(p, "min_version"));
  int rc = cached_user(id, min, result);
  if (rc <= 0) return rc == TL_ENOTFOUND ? tl_error_set(rc, "user '%s' not found", id) : rc;
  int64_t deadline = tl_time_mono_us() + the_users.a->s.min_version_timeout_us, wait = 1000;
  for (;;) {
    json_t *u = NULL;
    rc = read_user(id, &u);
    int64_t have = u ? json_integer_value(json_object_get(u, "version")) : 0;
    if ((rc == 0 && have >= min) || (rc != 0 && rc != TL_ENOTFOUND) || (rc && min <= 0)) {
      *result = u;
      return rc;
    }
    json_decref(u);
    if (tl_time_mono_us() >= deadline)
      return tl_error_set(TL_ETIMEOUT, "user '%s': the read model is at version %lld, not yet at "
                                       "min_version %lld", id, (long long)have, (long long)min);
    tl_sleep_us(wait);
    wait = wait < 50000 ? wait * 2 : 50000;
  }
}

/* ListUsers {active?, limit, cursor?}: keyset pagination by id (UUIDv7
 * ids sort by creation time). */
static int q_list(const json_t *p, json_t **result, void *ctx)
{
  (void)ctx;
  const json_t *active = json_object_get(p, "active");
  int64_t limit = json_integer_value(json_object_get(p, "limit"));
  const char *cursor = str(p, "cursor");
  char sql[300];
  snprintf(sql, sizeof sql, "SELECT " USER_COLUMNS " FROM rm_users WHERE id > $1%s "
                            "ORDER BY id LIMIT $2", active ? " AND active = $3" : "");
  tl_value args[] = { tl_text(cursor ? cursor : ""), tl_int(limit + 1), tl_int(json_is_true(active)) };
  tl_rows *r;
  int rc = tl_db_query_ro(the_users.a->db, &r, sql, args, active ? 3 : 2);
  if (rc) return rc;
  json_t *items = json_array(), *out = json_object();
  while ((rc = tl_rows_next(r)) == 1) json_array_append_new(items, row_json(r));
  tl_rows_free(r);
  if (rc < 0) {
    json_decref(items);
    json_decref(out);
    return rc;
  }
  json_t *next = json_null();
  if ((int64_t)json_array_size(items) > limit) {
    json_array_remove(items, (size_t)limit);
    next = json_incref(json_object_get(json_array_get(items, (size_t)limit - 1), "id"));
  }
  json_object_set_new(out, "items", items);
  json_object_set_new(out, "next_cursor", next);
  *result = out;
  return 0;
}

/* GetUserAt {id, at}: the user as it was at `at` (µs), replayed from the
 * events appended until then. */
static int q_at(const json_t *p, json_t **result, void *ctx)
{
  (void)ctx;
  const char *id = str(p, "id");
  char stream[64];
  snprintf(stream, sizeof stream, "user-%s", id);
  tl_event_list *l;
  int rc = tl_es_get_events_until(the_users.a->es, stream,
                                  json_integer_value(json_object_get(p, "at")), &l);
  if (rc) return rc == TL_ENOTFOUND ? tl_error_set(rc, "user '%s' not found", id) : rc;
  if (l->count == 0) {
    tl_event_list_free(l);
    return tl_error_set(TL_ENOTFOUND, "user '%s' did not exist at that time", id);
  }
  json_t *st = json_object();
  for (size_t i = 0; i < l->count && rc == 0; i++) rc = user_apply(st, &l->events[i], NULL);
  if (rc == 0) *result = state_json(st, l->events[l->count - 1].version);
  json_decref(st);
  tl_event_list_free(l);
  return rc;
}

/* GetUserEvents {id, from_version, limit}: a page of the audit trail,
 * oldest first, and where the next page starts (null at the end). */
static int q_events(const json_t *p, json_t **result, void *ctx)
{
  (void)ctx;
  const char *id = str(p, "id");
  int64_t from = json_integer_value(json_object_get(p, "from_version"));
  int64_t limit = json_integer_value(json_object_get(p, "limit"));
  char stream[64];
  snprintf(stream, sizeof stream, "user-%s", id);
  tl_event_list *l;
  tl_es_read_opts ro = { .from_version = from > 0 ? from : 1, .max_count = (size_t)limit };
  int rc = tl_es_read_stream(the_users.a->es, stream, &ro, &l);
  if (rc) return rc == TL_ENOTFOUND ? tl_error_set(rc, "user '%s' not found", id) : rc;
  if (l->count == 0 && ro.from_version == 1) {
    tl_event_list_free(l);
    return tl_error_set(TL_ENOTFOUND, "user '%s' not found", id);
  }
  json_t *arr = json_array();
  for (size_t i = 0; i < l->count; i++) {
    const tl_event *e = &l->events[i];
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(e->id));
    json_object_set_new(o, "type", json_string(e->event_type));
    json_object_set_new(o, "version", json_integer(e->version));
    json_object_set_new(o, "position", json_integer(e->position));
    json_object_set_new(o, "timestamp", time_json(e->timestamp_us));
    json_object_set_new(o, "data", json_loads(e->data, 0, NULL));
    json_object_set_new(o, "metadata", json_loads(e->metadata ? e->metadata : "{}", 0, NULL));
    json_array_append_new(arr, o);
  }
  json_t *next = (int64_t)l->count == limit ? json_integer(l->events[l->count - 1].version + 1)
                                             : json_null();
  tl_event_list_free(l);
  *result = json_pack("{s:o, s:o}", "events", arr, "next_from_version", next);
  return 0;
}

/* ---- registration ------------------------------------------------------------------------ */

int users_register(app *a)
{
  the_users.a = a;
  static const tl_cqrs_handler handlers[] = { cmd_create, cmd_update, cmd_update, cmd_update,
                                              cmd_deactivate };
  _Static_assert(sizeof handlers / sizeof handlers[0] == sizeof specs / sizeof specs[0],
                 "one handler per command");
  int rc = 0;
  for (size_t i = 0; i < sizeof specs / sizeof specs[0] && rc == 0; i++) {
    rc = tl_command_bus_register(a->commands, specs[i].command, handlers[i], NULL);
    if (rc == 0)
      rc = tl_command_bus_validator(a->commands, specs[i].command, validate, (void *)&specs[i]);
  }
  if (rc == 0) rc = tl_query_bus_register(a->queries, "GetUser", q_get, NULL);
  if (rc == 0) rc = tl_query_bus_register(a->queries, "ListUsers", q_list, NULL);
  if (rc == 0) rc = tl_query_bus_register(a->queries, "GetUserAt", q_at, NULL);
  if (rc == 0) rc = tl_query_bus_register(a->queries, "GetUserEvents", q_events, NULL);
  return rc;
}
