/* idem.h — exactly-once feedback by request id (SPEC §6): the answers given to feedback
 * requests that carried an OIP `id`, per model, for --feedback-id-window.
 *
 * A feedback request with an id claims (model, id) before it is queued:
 *   new       — no record: a pending one is made; the step runs and the engine then
 *               finishes the record with its answer (or drops it when the step failed, so
 *               that a retry applies it);
 *   repeat    — the id was answered within the window with the same body: answer that
 *               again (same step, same loss), apply nothing;
 *   waiting   — the first request with this id is still running or committing: this one is
 *               parked and gets the first one's answer (or error) when it comes;
 *   conflict  — the id was used with a different body: 409.
 * Records live in memory, loop thread only; the journal writes each finished record in the
 * same transaction as its step, and ts_idem_load puts them back at start, so a repeat is
 * recognised across a restart too. Memory: one record per id within the window (about
 * 100 bytes plus the id and the answer, in an arena: arena.h); expired records are dropped
 * as new ones arrive. The records are bounded by bytes too (--feedback-id-bytes): a client
 * sending ids faster than the bound holds for the window (by mistake or to exhaust the
 * daemon's memory) makes the table forget its oldest answered ids early, with a metric and
 * a log line, rather than grow until the kernel kills the daemon.
 */
#ifndef TS_IDEM_H
#define TS_IDEM_H

#include <stdint.h>

#include "server/http/http.h"

typedef struct ts_idem ts_idem;
typedef struct ts_idem_rec ts_idem_rec;

typedef enum { TS_IDEM_NEW, TS_IDEM_REPEAT, TS_IDEM_WAITING, TS_IDEM_CONFLICT } ts_idem_status;

/* window_ms: how long an answered id is remembered; max_bytes: when the records take more
 * (ts_idem_bytes), the oldest answered ones are forgotten before their window ends (0: no
 * bound). NULL when out of memory. */
ts_idem *ts_idem_new(int64_t window_ms, int64_t max_bytes);
/* Free every record; parked requests are answered 503 (shutting down). */
void ts_idem_free(ts_idem *t);

/* Claim (model, id) for a request whose tensors hash to body_hash, at now_ms.
 *   TS_IDEM_NEW:      *rec is the new pending record (finish or drop it later);
 *   TS_IDEM_REPEAT:   *answer is the first answer (owned by the table; valid until the
 *                     next call into it);
 *   TS_IDEM_WAITING:  req was parked behind the pending first request (the table answers it);
 *   TS_IDEM_CONFLICT: nothing changed.
 * Returns -1 when out of memory (nothing changed). */
int ts_idem_claim(ts_idem *t, const char *model, const char *id, uint64_t body_hash, int64_t now_ms,
                  ts_req *req, ts_idem_rec **rec, const char **answer, ts_idem_status *status);
/* The step of rec is durable: remember answer (copied) and answer the parked requests. */
void ts_idem_finish(ts_idem *t, ts_idem_rec *rec, const char *answer);
/* The step of rec was not applied: forget the id (a retry applies it) and answer the parked
 * requests with status and msg (plus Retry-After for a 503). */
void ts_idem_drop(ts_idem *t, ts_idem_rec *rec, int status, const char *msg);
/* A finished record from the database (start-up). Ignored when expired or out of memory. */
void ts_idem_load(ts_idem *t, const char *model, const char *id, uint64_t body_hash,
                  const char *answer, int64_t created_ms, int64_t now_ms);
/* Whether (model, id) has a record (pending or answered) at now_ms; nothing changes but
 * the dropping of expired records. Forwarding asks it before claiming a broadcast request. */
int ts_idem_knows(ts_idem *t, const char *model, const char *id, int64_t now_ms);
/* The creation time of the oldest record held (0: none): every id made before it has been
 * forgotten (expired, or over max_bytes), so its exactly-once row in the database is of no
 * more use either (journal.h, ts_journal_step.ids_floor_ms). */
int64_t ts_idem_floor_ms(const ts_idem *t);
/* Records held, the bytes they take, and the answered ids forgotten before their window
 * ended because of max_bytes (metrics). */
int64_t ts_idem_count(const ts_idem *t);
int64_t ts_idem_bytes(const ts_idem *t);
int64_t ts_idem_evicted(const ts_idem *t);

#endif
