/* Background work: every user.created message submits a durable
 * welcome_email job, and an hourly cleanup job removes expired
 * idempotency keys.
 *
 * Delivery: the relay publishes each event at least once, so a message
 * can arrive twice. The job is submitted with the event id as its unique
 * key (a second submit while the first is pending is a no-op), and the
 * job records the event id in welcome_emails after sending, skipping
 * events already recorded: one email per user, except when the process
 * dies between the SMTP server's acceptance and that record (then the
 * email goes out again: at least once, de-duplicated by event id). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"

static const char *str(const json_t *o, const char *k)
{
  return json_string_value(json_object_get(o, k));
}

/* Submit the welcome email job of a UserCreated event (its id, data
 * {id, name, email} and trace). 0, TL_EINVAL (data without id or email:
 * retrying cannot help) or the job store's error. */
static int submit_welcome(app *a, const char *event_id, const char *data, size_t len,
                          const char *traceparent)
{
  json_t *d = json_loadb(data, len, 0, NULL);
  const char *user = str(d, "id"), *email = str(d, "email");
  if (!event_id || !user || !email) {
    json_decref(d);
    return tl_error_set(TL_EINVAL, "user.created without event id, id or email");
  }
  json_t *args = json_pack("{s:s, s:s, s:s, s:O, s:s?}", "event_id", event_id, "user_id", user,
                           "email", email, "name", json_object_get(d, "name"), "traceparent",
                           traceparent);
  char *text = json_dumps(args, JSON_COMPACT);
  int64_t job = 0;
  int rc = tl_jobs_submit(a->jobs, "welcome_email", text,
                          &(tl_job_opts){ .unique_key = event_id, .id_out = &job });
  if (rc == 0)
    tl_log(TL_LOG_INFO, "welcome email job submitted", TL_F_STR("event_id", event_id),
           TL_F_STR("user_id", user), TL_F_INT("job_id", job));
  else
    tl_log(TL_LOG_WARN, "welcome email job not submitted, will retry",
           TL_F_STR("event_id", event_id), TL_F_STR("error", tl_error_last()));
  free(text);
  json_decref(args);
  json_decref(d);
  return rc;
}

/* user.created from the message queue. */
static int on_user_created(const tl_mq_msg *msg, void *ctx)
{
  int rc = submit_welcome(ctx, tl_mq_msg_header(msg, "event-id"), msg->data, msg->len,
                          tl_mq_msg_header(msg, "traceparent"));
  if (rc == TL_EINVAL)
    tl_log(TL_LOG_WARN, "dead-lettered a user.created message",
           TL_F_STR("message_id", msg->id), TL_F_STR("error", tl_error_last()));
  return rc == 0 ? TL_MQ_ACK : rc == TL_EINVAL ? TL_MQ_REJECT : TL_MQ_RETRY;
}

/* UserCreated from the event store (the in-process bus case). */
static int on_user_created_event(const tl_event *ev, tl_tx *tx, void *ctx)
{
  (void)tx;
  json_t *meta = json_loads(ev->metadata ? ev->metadata : "{}", 0, NULL);
  const char *tp = str(meta, "traceparent");
  tl_log_context_set_traceparent(NULL, tp);
  int rc = submit_welcome(ctx, ev->id, ev->data, strlen(ev->data), tp);
  if (rc == TL_EINVAL) {
    tl_log(TL_LOG_ERROR, "skipped a UserCreated event", TL_F_STR("event_id", ev->id),
           TL_F_STR("error", tl_error_last()));
    rc = 0;
  }
  tl_log_context_set(NULL, NULL);
  json_decref(meta);
  return rc;
}

static int welcome_email(const char *args_json, tl_job_ctx *ctx)
{
  app *a = tl_job_worker_ctx(ctx);
  json_t *args = json_loads(args_json, 0, NULL);
  const char *event_id = str(args, "event_id"), *user = str(args, "user_id");
  const char *email = str(args, "email"), *name = str(args, "name");
  if (!event_id || !user || !email) {
    json_decref(args);
    return tl_job_discard(ctx, "arguments without event_id, user_id or email");
  }
  tl_log_context_set_traceparent(NULL, str(args, "traceparent"));
  tl_rows *r = NULL;
  int rc = tl_db_query(a->db, &r, "SELECT 1 FROM welcome_emails WHERE event_id = $1",
                       TL_ARGS(tl_text(event_id)));
  int sent = rc == 0 ? tl_rows_next(r) : rc;
  tl_rows_free(r);
  if (sent < 0) {
    rc = tl_job_error(ctx, "welcome_emails: %s", tl_error_last());
  } else if (sent == 1) {
    tl_log(TL_LOG_INFO, "welcome email already sent", TL_F_STR("event_id", event_id),
           TL_F_STR("user_id", user));
    rc = TL_JOB_OK;
  } else {
    char body[512];
    snprintf(body, sizeof body, "Hello %s,\n\nwelcome aboard! Your account %s is ready.\n",
             name ? name : "", email);
    if (mailer_send(a->mail, email, "Welcome", body) != 0) {
      rc = tl_job_error(ctx, "%s", tl_error_last());
    } else {
      rc = tl_db_exec(a->db, NULL, "INSERT INTO welcome_emails (event_id, user_id, sent_us) "
                                   "VALUES ($1, $2, $3)",
                      TL_ARGS(tl_text(event_id), tl_text(user), tl_int(tl_time_now_us())));
      if (rc && rc != TL_ECONFLICT)
        tl_log(TL_LOG_WARN, "welcome email sent but not recorded", TL_F_STR("event_id", event_id),
               TL_F_STR("error", tl_error_last()));
      tl_log(TL_LOG_INFO, "welcome email job done", TL_F_STR("event_id", event_id),
             TL_F_STR("user_id", user), TL_F_INT("job_id", tl_job_id(ctx)),
             TL_F_INT("attempt", tl_job_attempt(ctx)));
      rc = TL_JOB_OK;
    }
  }
  tl_log_context_set(NULL, NULL);
  json_decref(args);
  return rc;
}

/* Remove idempotency keys older than IDEMPOTENCY_TTL. Completed jobs are
 * pruned by the job store itself (JOB_RETENTION). */
static int cleanup(const char *args_json, tl_job_ctx *ctx)
{
  (void)args_json;
  app *a = tl_job_worker_ctx(ctx);
  int64_t cut = tl_time_now_us() - a->s.idempotency_ttl_us, n = 0;
  int rc = tl_db_exec(a->db, &n, "DELETE FROM trellis_cqrs_idempotency WHERE created_us < $1",
                      TL_ARGS(tl_int(cut)));
  if (rc) return tl_job_error(ctx, "cleanup: %s", tl_error_last());
  char slot[40];
  tl_time_format(tl_job_scheduled_at(ctx), 0, slot, sizeof slot);
  tl_log(TL_LOG_INFO, "cleanup done", TL_F_STR("slot", slot), TL_F_INT("job_id", tl_job_id(ctx)),
         TL_F_INT("idempotency_keys_removed", n));
  return TL_JOB_OK;
}

int background_register(app *a)
{
  int rc = tl_jobs_register(a->jobs, &(tl_worker){ .kind = "welcome_email", .execute = welcome_email,
                                                   .ctx = a, .max_retries = 8,
                                                   .retry_delay_ms = 2000, .timeout_ms = 60000 });
  if (rc == 0)
    rc = tl_jobs_register(a->jobs, &(tl_worker){ .kind = "cleanup", .execute = cleanup, .ctx = a,
                                                 .max_retries = 2, .timeout_ms = 600000 });
  if (rc == 0) rc = tl_jobs_schedule(a->jobs, "cleanup", a->s.cleanup_schedule, "cleanup", "{}");
  return rc;
}

/* With a broker, user.created comes from the message queue, as any
 * other consumer would get it, in the durable group
 * "<SERVICE_NAME>-welcome-email" (one replica gets each message). Call it
 * before the relay starts: a new group only gets what is published after
 * it exists. The in-process bus keeps nothing across a
 * crash (a message published but not yet handled is gone), so with it the
 * jobs are submitted from a named event-store subscription instead, whose
 * checkpoint in the database moves only after the submit succeeded. */
int background_subscribe(app *a)
{
  if (a->s.mq.type == TL_MQ_MEMORY) {
    static const char *const types[] = { "UserCreated" };
    tl_es_sub_opts o = { .name = "welcome-email",
                         .filter = { .category = "user", .types = types, .ntypes = 1 } };
    return tl_es_subscribe(a->es, &o, on_user_created_event, a, &a->welcome_es);
  }
  char group[64];
  snprintf(group, sizeof group, "%s-welcome-email", a->s.service_name);
  tl_mq_sub_opts o = { .group = group, .concurrency = 4, .max_deliveries = 10 };
  return tl_mq_subscribe(a->mq, "user.created", on_user_created, a, &o, &a->welcome_sub);
}
