/* api-management: the reference service. One struct holds every module
 * the service runs; each file wires one part of it:
 *
 *   users.c       the users domain: commands, events, the read model, queries
 *   api.c         the HTTP API (/api/v1, /openapi.json)
 *   auth.c        API keys
 *   background.c  the welcome-email subscriber and job, the cleanup job
 *   mailer.c      the email sender (a log sink, or SMTP)
 *   main.c        start-up and graceful shutdown
 */
#ifndef API_MANAGEMENT_APP_H
#define API_MANAGEMENT_APP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <trellis/trellis.h>

#include "settings.h"

typedef struct auth auth;
typedef struct mailer mailer;

typedef struct app {
  settings s;
  tl_db *db;
  tl_es *es;
  tl_aggregate_group *group; /* NULL: GROUP_COMMIT=false */
  tl_mq *mq;
  tl_jobs *jobs;
  tl_command_bus *commands;
  tl_query_bus *queries;
  tl_projection *users_projection;
  tl_relay *relay;
  tl_mq_sub *welcome_sub;
  tl_cache *cache;         /* NULL: USERS_CACHE=false */
  tl_mq_sub *cache_sub;    /* other replicas' changes, for the cache */
  tl_es_sub *welcome_es;
  mailer *mail;
  auth *keys;
  tl_http_server *http;
} app;

/* ---- users.c ---- */
/* The service's own tables (migration set "api_management"). */
int users_migrate(tl_db *db);
/* Register the commands (CreateUser, UpdateUser, RenameUser, ChangeEmail,
 * DeactivateUser) and queries (GetUser, ListUsers, GetUserAt,
 * GetUserEvents) on the app's buses. */
int users_register(app *a);
/* Start the projection that keeps the read model (table rm_users). */
int users_projection_start(app *a);
/* With a broker and a cache: follow every user event so that this
 * replica's in-process cache drops what another replica changed. */
int users_cache_follow(app *a);
/* Bounds shared with the API's validation. */
#define USERS_LIST_MAX 100
#define USERS_EVENTS_MAX 1000

/* ---- api.c ---- */
/* Add every /api/v1 route and GET /openapi.json to the server. */
int api_routes(app *a);
/* Print "METHOD PATTERN" for every route api_routes adds. */
void api_print_routes(FILE *out);

/* ---- auth.c ---- */
/* Keep SHA-256 hashes of `keys` (NULL-terminated). With no key, make a
 * random development key and return it in `dev_key` (65 bytes). */
int auth_new(auth **out, char *const *keys, char dev_key[65]);
void auth_free(auth *a);
/* Does the request carry a valid key ("Authorization: Bearer K" or
 * "X-API-Key: K")? Constant time in the key's content. */
bool auth_check(const auth *a, tl_http_req *req);

/* ---- mailer.c ---- */
/* A log sink when smtp_url is empty, else SMTP through libcurl. */
int mailer_new(mailer **out, const settings *s);
void mailer_free(mailer *m);
/* Send one plain-text email. Returns 0 or a TL_E* code with the reason. */
int mailer_send(mailer *m, const char *to, const char *subject, const char *body);

/* ---- background.c ---- */
/* Register the welcome_email and cleanup workers and the cleanup
 * schedule on the app's executor. */
int background_register(app *a);
/* Follow user.created (the message queue, or the event store with the
 * in-process bus): each one submits a welcome_email job. */
int background_subscribe(app *a);

#endif
