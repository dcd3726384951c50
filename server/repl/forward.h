/* forward.h — feedback by inference id on whichever replica receives it (README "Feedback
 * by inference id", SPEC §7): a replica whose feedback window does not hold the inference
 * asks the replica that does, over core NATS request/reply on the connection replication
 * already owns (repl.h). Nothing is persisted in NATS: the holder applies the step as any
 * of its own (journal, JetStream publish) and the answer travels back.
 *
 * Why forwarding and not the window in JetStream KV: each replica's window stays bounded by
 * its own flags and in its own memory; an inference's input never crosses the wire except
 * in the one forwarded feedback that needs it (and then only the label or target: the
 * input stays with the holder); a KV window would write every inference's input into NATS,
 * most of which never gets a label.
 *
 * Who is asked: ids the daemon makes name the run that made them ("<16 hex>-<n>",
 * window.h); each replica listens on <stream>.byid.<its 16 hex> and such an id is asked of
 * that replica only (nobody listening: the run is gone, 404 at once). Any other id (chosen
 * by the client) is asked of all on <stream>.byid.any: every replica listens, only one whose
 * window or exactly-once record knows the id answers, the others stay silent.
 *
 * Protocol: the request is the feedback re-encoded as an OIP body (JSON + binary tensor
 * data, so the numbers are exact) with headers Tscale-Origin, Tscale-Model, Tscale-Version
 * and Tscale-Json-Length, and a reply subject of this replica's inbox. The holder answers
 * twice: "held" at once (header Tscale-Held: its replica id), then the final answer
 * (Tscale-Status, Tscale-Replica; the JSON body). The asker waits timeout_ms for "held"
 * (none: 404, no replica holds it), then answer_timeout_ms for the answer (none: 504; a
 * retry with the same id reaches the holder again and applies it at most once).
 *
 * The holder serves a forwarded request exactly as an HTTP one: a ts_req whose reply_fn
 * sends the answer back goes through the dispatch function (api.c: model and version
 * checks, then the engine's by-id path with its validation, exactly-once record, journal and
 * PubAck wait). from_replica keeps it from being forwarded again. So a repeat sent to a
 * third replica reaches the holder and gets the first answer: exactly-once holds across
 * replicas. Forwarded requests are trusted as the receiving replica checked the feedback
 * token; NATS' own authentication (--replicate-token-file) guards the subjects.
 *
 * Bounds: TS_FORWARD_MAX_ASKS forwards waiting at once (503 past it); TS_FORWARD_MAX_SERVING
 * requests of others being served at once (503, or silence for a broadcast); a request
 * over NATS' max_payload is refused with 413 (the request body limits apply before).
 *
 * Threads: libnats' subscription callbacks only copy messages into mutex-guarded lists and
 * wake the loop (ts_wake), as repl.c does. Every function is loop thread only.
 */
#ifndef TS_REPL_FORWARD_H
#define TS_REPL_FORWARD_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "proto/buf.h"
#include "proto/oip.h"
#include "server/engine/engine.h"
#include "server/engine/idem.h"
#include "server/engine/window.h"
#include "server/http/http.h"
#include "server/repl/repl.h"

#define TS_FORWARD_MAX_ASKS 1024
#define TS_FORWARD_MAX_SERVING 256

typedef struct ts_forward ts_forward;

typedef struct {
    ts_repl *repl;                 /* its connection, replica id and stream name; forwarding is
                                      on exactly when replication is */
    ts_window *window;             /* this run's id prefix; whether an id is known here */
    ts_idem *idem;                 /* whether an id has an exactly-once record here (NULL: none) */
    int64_t timeout_ms;            /* --forward-timeout-ms */
    int64_t answer_timeout_ms;     /* --forward-answer-timeout-ms */
    int64_t max_elements;          /* per tensor, when a forwarded body is parsed (as HTTP's) */
    ts_http_dispatch_fn dispatch;  /* serves a forwarded request (ts_api_dispatch) on the loop */
    void *dispatch_ctx;
} ts_forward_config;

/* The pointers must outlive the ts_forward. NULL when out of memory. */
ts_forward *ts_forward_new(const ts_forward_config *cfg);
/* After ts_repl_start: subscribe (libnats sends the subscriptions once connected). No-op
 * when replication is off. 0, or -1 + err. */
int ts_forward_start(ts_forward *f, uv_loop_t *loop, char *err, size_t errlen);
/* Forwards waiting for an answer (shutdown waits for them). */
int64_t ts_forward_pending(const ts_forward *f);
/* Before ts_http_stop and ts_repl_stop: unsubscribe, answer every waiting forward 503 and
 * close the handles (run the loop afterwards). Requests of others still being served are
 * answered when they finish, if the connection is still there. */
void ts_forward_stop(ts_forward *f);
/* After ts_forward_stop and the loop run that closed its handles (or when never started). */
void ts_forward_free(ts_forward *f);

/* Ask the other replicas to apply feedback oip (by id; the path named model and version,
 * "" for none). Returns 0 when sent (cb follows: the answer on the loop, exactly once, as
 * ts_byid_cb in engine.h says, which owns the type since the engine asks this through
 * ts_engine_repl); -1 when it is not forwarded: forwarding is off or the id was made by
 * this run (answer the local 404); or an HTTP status (413, 503) with err when it cannot be
 * sent. */
int ts_forward_ask(ts_forward *f, const char *model, const char *version, const ts_oip_request *oip,
                   ts_byid_cb cb, void *arg, char *err, size_t errlen);

/* Prometheus lines (nothing when off): forwards sent, answered, missed, timed out, waiting;
 * requests of others served. */
void ts_forward_render_metrics(ts_forward *f, ts_buf *out);

#endif
