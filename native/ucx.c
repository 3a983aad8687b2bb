/* UCP bindings for the ucx:// transport (tfyarn/transport/ucx.py is the Python side).
 *
 * One process-wide ucp_context (created on first use, so UCX_TLS and friends are read
 * then) and one UcxWorker per listener or outgoing connection. Each worker has a progress
 * thread that sleeps on the worker's event fd (ucp_worker_arm + poll) and does all
 * ucp_worker_progress calls; Python threads issue operations under the worker's mutex,
 * wake the progress thread with ucp_worker_signal, and sleep on a condition variable until
 * the completion callback (run by the progress thread, under the same mutex) marks the
 * operation done. The worker therefore runs in UCS_THREAD_MODE_SERIALIZED and no UCX call
 * is ever made without the mutex. Python objects are never touched without the GIL, and
 * the mutex is never taken while holding the GIL, so the two locks cannot deadlock.
 *
 * Wire protocol: every message is one UCP active message (id TFY_AM_ID) whose user header
 * is `am_hdr` (type, status, destination connection id, source connection id); several
 * connections share a worker and are told apart by the destination id. UCP picks eager or
 * rendezvous by size; a rendezvous message is received with ucp_am_recv_data_nbx straight
 * into the receiver's buffer when a recv_into is already waiting, otherwise its descriptor
 * is queued until the next recv. One-sided put/get use ucp_put_nbx/ucp_get_nbx with the
 * remote key that the peer packed for a registered region; the key is fetched by name with
 * an RKEY_REQ/RKEY_REP exchange on first use and cached per connection. Region names are
 * write-once for the life of a worker, so a cached key can never point at freed memory.
 */
#include "tfyarn_native.h"

#ifndef TFYARN_HAVE_UCX

int tfy_ucx_setup(PyObject *module) {
    Py_INCREF(Py_False);
    return PyModule_AddObject(module, "HAVE_UCX", Py_False);
}

#else

#include <ucp/api/ucp.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TFY_AM_ID 17
#define STAGE_AFTER 0.002 /* seconds an unexpected rendezvous waits for a receive */
#define SLICE_NS 100000000L /* condition waits wake this often to check deadlines/signals */

enum { MSG_DATA = 1, MSG_BYE = 2, MSG_RKEY_REQ = 3, MSG_RKEY_REP = 4 };
enum { R_IDLE = 0, R_POSTED, R_INFLIGHT, R_DONE, R_TOOBIG, R_ERROR };

typedef struct {
    uint32_t type;
    uint32_t status; /* MSG_DATA: sequence number; MSG_RKEY_REP: 0 found, 1 no such region */
    uint64_t dst;    /* receiver's connection id */
    uint64_t src;    /* sender's connection id */
} am_hdr;

static PyObject *TransportError, *FrameError, *TransportUnavailableError;

/* Fault injection for the tests (TFYARN_UCX_TEST_SWAP_SEQ=1): the sender numbers its data
 * messages 1, 0, 3, 2, ... so that the receiver sees them out of order and must put them
 * back in order (which then delivers each pair swapped). Never set in production. */
static int g_swap_seq;

/* ------------------------------------------------------------------ context */

static ucp_context_h g_ctx;
static pthread_mutex_t g_ctx_lock = PTHREAD_MUTEX_INITIALIZER;

/* Map [addr, addr+len) with the context (len 0 maps one byte: UCX refuses empty ranges). */
static ucs_status_t mem_map(void *addr, size_t len, ucp_mem_h *memh) {
    ucp_mem_map_params_t mp;
    memset(&mp, 0, sizeof mp);
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = addr;
    mp.length = len > 0 ? len : 1;
    return ucp_mem_map(g_ctx, &mp, memh);
}

/* The buffer pool's registrar (see tfyarn_native.h): pool slabs are mapped with the
 * context once it exists, so sends from and receives into them register nothing. */
static void *pool_register_memory(void *base, size_t len) {
    ucp_mem_h memh = NULL;
    return g_ctx != NULL && mem_map(base, len, &memh) == UCS_OK ? (void *)memh : NULL;
}

static void pool_deregister_memory(void *handle) { ucp_mem_unmap(g_ctx, (ucp_mem_h)handle); }

static const tfy_registrar pool_registrar = {pool_register_memory, pool_deregister_memory};

/* The process-wide UCP context, created on first use (UCX reads its UCX_* variables then);
 * NULL with a Python exception set on failure. Needs the GIL (it installs the registrar). */
static ucp_context_h ucx_context(void) {
    if (g_ctx != NULL) return g_ctx;
    ucs_status_t st;
    ucp_config_t *cfg = NULL;
    pthread_mutex_lock(&g_ctx_lock);
    if (g_ctx == NULL) {
        st = ucp_config_read(NULL, NULL, &cfg);
        if (st == UCS_OK) {
            ucp_params_t p;
            memset(&p, 0, sizeof p);
            p.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
            p.features = UCP_FEATURE_AM | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
            /* Workers live on different threads and share the context's registrations. */
            p.mt_workers_shared = 1;
            st = ucp_init(&p, cfg, &g_ctx);
            ucp_config_release(cfg);
        }
        if (st != UCS_OK) {
            g_ctx = NULL;
            pthread_mutex_unlock(&g_ctx_lock);
            PyErr_Format(TransportUnavailableError,
                         "UCX could not be initialised (ucp_init: %s); check the UCX_* "
                         "environment variables (UCX_TLS=%s)",
                         ucs_status_string(st),
                         getenv("UCX_TLS") != NULL ? getenv("UCX_TLS") : "<unset>");
            return NULL;
        }
    }
    pthread_mutex_unlock(&g_ctx_lock);
    tfy_pool_set_registrar(&pool_registrar);
    return g_ctx;
}

/* The pool slab's memory handle covering the buffer, or NULL (UCX registers on the fly). */
static ucp_mem_h buffer_memh(PyObject *obj, const void *addr, size_t len) {
    return (ucp_mem_h)tfy_buffer_registration(obj, addr, len);
}

/* ------------------------------------------------------------------ worker state */

enum { M_EAGER = 0, M_RNDV = 1, M_STAGED = 2 };
enum { S_INFLIGHT = 0, S_DONE = 1, S_ERROR = 2 };

/* A message that arrived before a receive asked for it. A rendezvous message first keeps
 * its descriptor (M_RNDV): a receive posted within STAGE_AFTER pulls it straight into
 * the caller's buffer (the common case in a loop of sends and receives, where the next
 * receive is posted a few microseconds late). After that grace period the progress
 * thread pulls it into a staging buffer (M_STAGED) instead, because the sender's send
 * cannot complete until its data has been received, and a sender that sends twice
 * before the peer receives would otherwise wait forever. */
typedef struct msg {
    struct msg *next;
    struct worker *w;
    void *data; /* M_EAGER: persistent payload; M_RNDV: data descriptor; M_STAGED: buffer */
    size_t len;
    int kind;
    int sstate;   /* M_STAGED: S_INFLIGHT until the pull completes */
    int stage_failed; /* M_RNDV: staging was tried and failed (out of memory) */
    double arrived;
    uint32_t seq;
    int orphaned; /* M_STAGED: nobody wants it any more; the completion frees it */
    ucs_status_t sstatus;
} msg_t;

typedef struct rkey_ent {
    struct rkey_ent *next;
    char *name;
    uint64_t raddr;
    uint64_t rlen;
    ucp_rkey_h rkey;
} rkey_ent;

struct worker;

typedef struct conn {
    struct conn *next;
    struct worker *w;
    uint64_t id, peer_id;
    ucp_ep_h ep;
    ucs_status_t ep_status; /* set by the error handler or the monitor when the peer fails */
    int monitor_fd;         /* our dup of the bootstrap TCP socket: EOF = peer gone (-1: none) */
    int peer_mode;          /* UCX itself detects peer failure (UCP_ERR_HANDLING_MODE_PEER) */
    int peer_closed;        /* peer sent BYE */
    int closing;            /* close_conn started */
    int users;              /* Python calls currently using this conn */
    msg_t *qh, *qt;         /* messages that arrived before a recv asked for them */
    /* Messages are numbered by the sender and delivered in that order. UCP does not
     * document an ordering guarantee for active messages across protocols and lanes
     * (multi-rail), so one that arrives early waits in `early` (sorted) for its turn. */
    uint32_t tx_seq, rx_seq;
    msg_t *early;
    /* the one posted receive (one receiver thread per connection) */
    int rstate;
    void *rbuf;
    size_t rcap, rlen;
    ucp_mem_h rmemh;
    ucs_status_t rstatus;
    /* the one outstanding remote-key request (one put/get thread per connection) */
    int rk_state; /* 0 idle, 1 waiting, 2 answered */
    uint32_t rk_status;
    void *rk_buf;
    size_t rk_len;
    rkey_ent *rkeys;
} conn_t;

typedef struct region {
    struct region *next;
    char *name;
    void *addr;
    size_t len;
    ucp_mem_h memh;
    int own_memh;
    void *rkey_buf;
    size_t rkey_len;
    Py_buffer view; /* keeps the exporter alive and its export counted */
} region_t;

typedef struct deferred {
    struct deferred *next;
    ucp_ep_h ep;
    am_hdr hdr;
    size_t len;
    char payload[];
} deferred_t;

typedef struct worker {
    PyObject_HEAD
    ucp_worker_h worker;
    int efd;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    int thread_started;
    int stop;
    int closed;
    conn_t *conns;
    uint64_t next_id;
    region_t *regions;
    deferred_t *dq_head, *dq_tail;
    void *addr;
    size_t addr_len;
    /* A waiting caller first drives the worker itself for this long (seconds) before it
     * sleeps (TFYARN_UCX_SPIN_US, default 0). A small message then completes without two
     * thread hand-offs (caller -> progress thread -> caller): 4 KiB round trips over
     * shared memory went from ~23 to ~5 us here. It burns CPU, and on oversubscribed
     * cores (our 2-core CI) it made latency far worse, hence off by default. */
    double spin_s;
} worker_t;

typedef struct {
    worker_t *w;
    int done;
    ucs_status_t status;
    size_t length;
} op_t;

static double mono_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double deadline_of(double timeout) { return timeout < 0 ? -1.0 : mono_now() + timeout; }

/* Wait one slice on the worker's condition; called with the lock held and the GIL released.
 * Returns 1 when the deadline passed, 0 otherwise. When a slice times out, Python signal
 * handlers get a chance to run (so Ctrl-C interrupts a blocked recv); *interrupted is set
 * if one raised (the exception stays set for the caller to return). */
static int wait_slice(worker_t *w, double deadline, PyThreadState **ts, int *interrupted) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_nsec += SLICE_NS;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec += 1;
        t.tv_nsec -= 1000000000L;
    }
    int rc = pthread_cond_timedwait(&w->cond, &w->lock, &t);
    if (rc == ETIMEDOUT && ts != NULL && !*interrupted) {
        pthread_mutex_unlock(&w->lock);
        PyEval_RestoreThread(*ts);
        if (PyErr_CheckSignals() < 0) *interrupted = 1;
        *ts = PyEval_SaveThread();
        pthread_mutex_lock(&w->lock);
    }
    return deadline >= 0 && mono_now() >= deadline;
}

static conn_t *find_conn(worker_t *w, uint64_t id) {
    for (conn_t *c = w->conns; c != NULL; c = c->next)
        if (c->id == id) return c;
    return NULL;
}

static region_t *find_region(worker_t *w, const char *name) {
    for (region_t *r = w->regions; r != NULL; r = r->next)
        if (strcmp(r->name, name) == 0) return r;
    return NULL;
}

static int conn_broken(conn_t *c) { return c->ep_status != UCS_OK || c->ep == NULL; }

/* ------------------------------------------------------------------ callbacks */

static void op_send_cb(void *req, ucs_status_t st, void *ud) {
    op_t *op = ud;
    op->status = st;
    op->done = 1;
    pthread_cond_broadcast(&op->w->cond);
}

/* Request parameters whose completion marks `op` done; `memh` (may be NULL) is the
 * registration of the local buffer, so UCX does not look it up or register it again. */
static void op_param(ucp_request_param_t *p, op_t *op, ucp_mem_h memh) {
    memset(p, 0, sizeof *p);
    p->op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p->cb.send = op_send_cb;
    p->user_data = op;
    if (memh != NULL) {
        p->op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        p->memh = memh;
    }
}

static void conn_recv_cb(void *req, ucs_status_t st, size_t length, void *ud) {
    conn_t *c = ud;
    if (st == UCS_OK) {
        c->rstate = R_DONE;
    } else {
        c->rstate = R_ERROR;
        c->rstatus = st;
    }
    ucp_request_free(req);
    pthread_cond_broadcast(&c->w->cond);
}

static void stage_done_cb(void *req, ucs_status_t st, size_t length, void *ud) {
    msg_t *m = ud;
    ucp_request_free(req);
    if (m->orphaned) {
        free(m->data);
        free(m);
        return;
    }
    m->sstate = st == UCS_OK ? S_DONE : S_ERROR;
    m->sstatus = st;
    pthread_cond_broadcast(&m->w->cond);
}

/* Pull a rendezvous message into a fresh staging buffer (lock held). 0 if started. */
static int msg_stage(worker_t *w, msg_t *m, void *desc) {
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, m->len ? m->len : 1) != 0) return -1;
    ucp_request_param_t p;
    memset(&p, 0, sizeof p);
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.recv_am = stage_done_cb;
    p.user_data = m;
    m->kind = M_STAGED;
    m->data = buf;
    m->sstate = S_INFLIGHT;
    ucs_status_ptr_t req = ucp_am_recv_data_nbx(w->worker, desc, buf, m->len, &p);
    if (req == NULL) {
        m->sstate = S_DONE;
    } else if (UCS_PTR_IS_ERR(req)) {
        m->sstate = S_ERROR;
        m->sstatus = UCS_PTR_STATUS(req);
    }
    return 0;
}

/* Free a queued message (lock held); an in-flight staging pull is orphaned instead. */
static void msg_discard(worker_t *w, msg_t *m) {
    if (m->kind == M_STAGED) {
        if (m->sstate == S_INFLIGHT) {
            m->orphaned = 1;
            return;
        }
        free(m->data);
    } else {
        ucp_am_data_release(w->worker, m->data);
    }
    free(m);
}

static void deferred_done_cb(void *req, ucs_status_t st, void *ud) {
    free(ud);
    ucp_request_free(req);
}

static void ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status) {
    conn_t *c = arg;
    c->ep_status = status;
    pthread_cond_broadcast(&c->w->cond);
}

/* Start receiving a rendezvous message into the posted buffer (lock held). */
static void conn_start_rndv(worker_t *w, conn_t *c, void *desc, size_t len) {
    ucp_request_param_t p;
    memset(&p, 0, sizeof p);
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.recv_am = conn_recv_cb;
    p.user_data = c;
    if (c->rmemh != NULL) {
        p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        p.memh = c->rmemh;
    }
    c->rlen = len;
    c->rstate = R_INFLIGHT;
    ucs_status_ptr_t req = ucp_am_recv_data_nbx(w->worker, desc, c->rbuf, len, &p);
    if (req == NULL) {
        c->rstate = R_DONE;
    } else if (UCS_PTR_IS_ERR(req)) {
        c->rstate = R_ERROR;
        c->rstatus = UCS_PTR_STATUS(req);
    }
}

static void queue_deferred(worker_t *w, ucp_ep_h ep, uint32_t type, uint32_t status,
                           uint64_t dst, uint64_t src, const void *payload, size_t len) {
    deferred_t *d = malloc(sizeof *d + len);
    if (d == NULL) return; /* the requester times out with a clear error */
    d->next = NULL;
    d->ep = ep;
    d->hdr.type = type;
    d->hdr.status = status;
    d->hdr.dst = dst;
    d->hdr.src = src;
    d->len = len;
    if (len) memcpy(d->payload, payload, len);
    if (w->dq_tail) w->dq_tail->next = d;
    else w->dq_head = d;
    w->dq_tail = d;
}

static void on_rkey_req(worker_t *w, conn_t *c, const am_hdr *h, const void *data, size_t len) {
    char name[256];
    size_t n = len < sizeof name - 1 ? len : sizeof name - 1;
    memcpy(name, data, n);
    name[n] = '\0';
    region_t *r = find_region(w, name);
    if (c->ep == NULL) return;
    if (r == NULL) {
        queue_deferred(w, c->ep, MSG_RKEY_REP, 1, h->src, c->id, NULL, 0);
        return;
    }
    size_t plen = 16 + r->rkey_len;
    char *payload = malloc(plen);
    if (payload == NULL) return;
    uint64_t addr = (uint64_t)(uintptr_t)r->addr, rlen = r->len;
    memcpy(payload, &addr, 8);
    memcpy(payload + 8, &rlen, 8);
    memcpy(payload + 16, r->rkey_buf, r->rkey_len);
    queue_deferred(w, c->ep, MSG_RKEY_REP, 0, h->src, c->id, payload, plen);
    free(payload);
}

/* Active-message handler; runs on the progress thread with the lock held. */
static ucs_status_t am_cb(void *arg, const void *header, size_t hlen, void *data, size_t len,
                          const ucp_am_recv_param_t *param) {
    worker_t *w = arg;
    if (hlen != sizeof(am_hdr)) return UCS_OK; /* not ours: drop */
    am_hdr h;
    memcpy(&h, header, sizeof h);
    conn_t *c = find_conn(w, h.dst);
    if (c == NULL || c->closing) return UCS_OK; /* connection gone: drop */
    int rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    switch (h.type) {
    case MSG_DATA: {
        msg_t *m = NULL;
        if (h.status != c->rx_seq || c->rstate != R_POSTED || c->qh != NULL) {
            m = calloc(1, sizeof *m);
            if (m == NULL) {
                c->ep_status = UCS_ERR_NO_MEMORY;
                pthread_cond_broadcast(&w->cond);
                return UCS_OK;
            }
            m->w = w;
            m->data = data;
            m->len = len;
            m->kind = rndv ? M_RNDV : M_EAGER;
            m->arrived = mono_now();
            m->seq = h.status;
        }
        if (h.status != c->rx_seq) {
            /* Early: park it, sorted by distance from the next expected number. */
            msg_t **pp = &c->early;
            while (*pp != NULL && (uint32_t)((*pp)->seq - c->rx_seq) < (uint32_t)(h.status - c->rx_seq))
                pp = &(*pp)->next;
            m->next = *pp;
            *pp = m;
            return UCS_INPROGRESS;
        }
        c->rx_seq++;
        ucs_status_t ret = UCS_INPROGRESS;
        if (m == NULL) {
            /* In order, and a receive is waiting with nothing queued ahead: deliver now. */
            if (len > c->rcap) {
                c->rstate = R_TOOBIG;
                c->rlen = len;
                ret = UCS_OK; /* dropped (a rendezvous sender is told it was not received) */
            } else if (rndv) {
                conn_start_rndv(w, c, data, len);
            } else {
                memcpy(c->rbuf, data, len);
                c->rlen = len;
                c->rstate = R_DONE;
                ret = UCS_OK;
            }
        } else {
            /* Keep the eager payload (persistent data) or the rendezvous descriptor. */
            if (c->qt) c->qt->next = m;
            else c->qh = m;
            c->qt = m;
        }
        /* Messages parked earlier may now be in turn. */
        while (c->early != NULL && c->early->seq == c->rx_seq) {
            msg_t *e = c->early;
            c->early = e->next;
            e->next = NULL;
            if (c->qt) c->qt->next = e;
            else c->qh = e;
            c->qt = e;
            c->rx_seq++;
        }
        pthread_cond_broadcast(&w->cond);
        return ret;
    }
    case MSG_BYE:
        c->peer_closed = 1;
        pthread_cond_broadcast(&w->cond);
        return UCS_OK;
    case MSG_RKEY_REQ:
        on_rkey_req(w, c, &h, data, len);
        return UCS_OK;
    case MSG_RKEY_REP:
        if (c->rk_state == 1) {
            free(c->rk_buf);
            c->rk_buf = malloc(len ? len : 1);
            if (c->rk_buf != NULL) memcpy(c->rk_buf, data, len);
            c->rk_len = len;
            c->rk_status = c->rk_buf != NULL ? h.status : 2;
            c->rk_state = 2;
            pthread_cond_broadcast(&w->cond);
        }
        return UCS_OK;
    default:
        return UCS_OK;
    }
}

/* Send queued replies; returns how many were handed to UCX (lock held). */
static int flush_deferred(worker_t *w) {
    int n = 0;
    while (w->dq_head != NULL) {
        deferred_t *d = w->dq_head;
        w->dq_head = d->next;
        if (w->dq_head == NULL) w->dq_tail = NULL;
        ucp_request_param_t p;
        memset(&p, 0, sizeof p);
        p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        p.cb.send = deferred_done_cb;
        p.user_data = d;
        ucs_status_ptr_t req =
            ucp_am_send_nbx(d->ep, TFY_AM_ID, &d->hdr, sizeof d->hdr, d->payload, d->len, &p);
        if (req == NULL || UCS_PTR_IS_ERR(req)) free(d);
        n++;
    }
    return n;
}

#define MAX_POLL 256

/* A monitor socket became readable: the peer closed it (or died) or broke protocol.
 * Anything the peer sent before (its BYE in particular) is drained first. */
static void on_monitor(worker_t *w, conn_t *c) {
    char b;
    ssize_t n = recv(c->monitor_fd, &b, 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    while (ucp_worker_progress(w->worker) != 0) {
    }
    close(c->monitor_fd); /* our dup; the peer learns nothing new from it */
    c->monitor_fd = -1;
    if (!c->peer_closed && c->ep_status == UCS_OK) c->ep_status = UCS_ERR_CONNECTION_RESET;
    pthread_cond_broadcast(&w->cond);
}

/* Stage the unexpected rendezvous messages whose grace period is over; return the
 * milliseconds until the next one is due (1000 if none). Lock held. */
static int stage_due(worker_t *w) {
    double now = mono_now(), next = 1.0;
    int started = 0;
    for (conn_t *c = w->conns; c != NULL; c = c->next) {
        if (c->closing) continue;
        msg_t *lists[2] = {c->qh, c->early};
        for (int l = 0; l < 2; l++)
        for (msg_t *m = lists[l]; m != NULL; m = m->next) {
            if (m->kind != M_RNDV || m->stage_failed) continue;
            double wait = m->arrived + STAGE_AFTER - now;
            if (wait <= 0) {
                if (msg_stage(w, m, m->data) < 0) m->stage_failed = 1;
                else started = 1;
            } else if (wait < next) {
                next = wait;
            }
        }
    }
    if (started) return 0;
    int ms = (int)(next * 1000.0) + 1;
    return ms > 1000 ? 1000 : ms;
}

static void *progress_main(void *arg) {
    worker_t *w = arg;
    struct pollfd pfd[MAX_POLL];
    uint64_t ids[MAX_POLL];
    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        while (ucp_worker_progress(w->worker) != 0) {
        }
        if (flush_deferred(w) > 0) continue;
        int timeout_ms = stage_due(w);
        if (timeout_ms == 0) continue;
        ucs_status_t st = ucp_worker_arm(w->worker);
        if (st == UCS_ERR_BUSY) continue; /* events arrived meanwhile: progress again */
        nfds_t n = 0;
        pfd[n].fd = w->efd;
        pfd[n].events = POLLIN;
        pfd[n].revents = 0;
        n++;
        for (conn_t *c = w->conns; c != NULL && n < MAX_POLL; c = c->next) {
            if (c->monitor_fd < 0 || c->closing) continue;
            pfd[n].fd = c->monitor_fd;
            pfd[n].events = POLLIN;
            pfd[n].revents = 0;
            ids[n] = c->id;
            n++;
        }
        pthread_mutex_unlock(&w->lock);
        /* The 1 s cap bounds the sleep even if a wake-up were lost. */
        int ready = poll(pfd, n, timeout_ms);
        pthread_mutex_lock(&w->lock);
        for (nfds_t i = 1; ready > 0 && i < n; i++) {
            if (pfd[i].revents == 0) continue;
            conn_t *c = find_conn(w, ids[i]);
            if (c != NULL && c->monitor_fd == pfd[i].fd && !c->closing) on_monitor(w, c);
        }
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* Drop queued replies to an endpoint about to be closed (lock held). */
static void purge_deferred(worker_t *w, ucp_ep_h ep) {
    deferred_t **pp = &w->dq_head;
    w->dq_tail = NULL;
    while (*pp != NULL) {
        deferred_t *d = *pp;
        if (d->ep == ep) {
            *pp = d->next;
            free(d);
        } else {
            w->dq_tail = d;
            pp = &d->next;
        }
    }
}

/* Close the endpoint by force (lock held): UCX completes its outstanding requests with
 * an error, so no caller's buffer stays in UCX's hands. */
static void conn_force_close(worker_t *w, conn_t *c, ucs_status_t why) {
    if (c->ep == NULL) return;
    purge_deferred(w, c->ep);
    ucp_request_param_t p;
    memset(&p, 0, sizeof p);
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t creq = ucp_ep_close_nbx(c->ep, &p);
    if (creq != NULL && !UCS_PTR_IS_ERR(creq)) ucp_request_free(creq);
    c->ep = NULL;
    if (c->ep_status == UCS_OK) c->ep_status = why;
    ucp_worker_signal(w->worker);
}

/* Wait for a UCX request (lock held, GIL released). On timeout, interruption or peer
 * failure the connection's endpoint is closed by force, which completes the request with
 * an error, so the caller's buffer is never left in UCX's hands. */
static ucs_status_t wait_op(worker_t *w, conn_t *c, ucs_status_ptr_t req, op_t *op,
                            double deadline, PyThreadState **ts, int *interrupted) {
    if (req == NULL) return UCS_OK;
    if (UCS_PTR_IS_ERR(req)) return UCS_PTR_STATUS(req);
    int expired = 0;
    double give_up = -1.0, spin_end = mono_now() + w->spin_s;
    while (!op->done && w->spin_s > 0 && mono_now() < spin_end) ucp_worker_progress(w->worker);
    if (!op->done) ucp_worker_signal(w->worker);
    while (!op->done) {
        if (c != NULL && give_up < 0 &&
            (expired || *interrupted || c->ep == NULL || c->ep_status != UCS_OK)) {
            conn_force_close(w, c, UCS_ERR_TIMED_OUT);
            give_up = mono_now() + 10.0;
        }
        if (wait_slice(w, deadline, ts, interrupted)) expired = 1;
        if (give_up > 0 && mono_now() > give_up) break; /* UCX never completed it: leak it */
    }
    if (!op->done) return UCS_ERR_TIMED_OUT;
    ucp_request_free(req);
    if (expired && op->status != UCS_OK) return UCS_ERR_TIMED_OUT;
    return op->status;
}

/* ------------------------------------------------------------------ Python helpers */

static void set_status_error(PyObject *type, const char *what, ucs_status_t st) {
    if (st == UCS_ERR_TIMED_OUT)
        PyErr_Format(type, "ucx: %s timed out (the connection is closed)", what);
    else
        PyErr_Format(type, "ucx: %s failed: %s", what, ucs_status_string(st));
}

static int worker_check(worker_t *w) {
    if (w->closed || w->worker == NULL) {
        PyErr_SetString(TransportError, "ucx: this worker is closed");
        return -1;
    }
    return 0;
}

/* Look up a connection and mark it in use (lock held). */
static conn_t *conn_acquire(worker_t *w, uint64_t id) {
    conn_t *c = find_conn(w, id);
    if (c == NULL || c->closing) return NULL;
    c->users++;
    return c;
}

static void conn_release(worker_t *w, conn_t *c) {
    c->users--;
    pthread_cond_broadcast(&w->cond);
}

/* ------------------------------------------------------------------ one operation's set-up */

/* What send, recv_into and put/get share: the caller's memory, held from io_hold to
 * io_end, its pool registration, and the connection used with the GIL released and the
 * worker's lock held, from io_enter to io_end. */
typedef struct {
    unsigned long long id; /* the connection */
    PyObject *obj;         /* what the memory belongs to (borrowed from the arguments) */
    double timeout;        /* seconds; negative: none */
    Py_buffer view;
    ucp_mem_h memh;        /* the pool slab's handle, or NULL */
    PyThreadState *ts;     /* the released GIL, from io_enter to io_end */
    conn_t *c;             /* after io_enter: the connection in use, or NULL when it is gone */
} io_t;

/* Hold io->obj's memory (PyBUF_SIMPLE to read it, PyBUF_WRITABLE to fill it) and find its
 * registration. Returns -1 with an exception set. */
static int io_hold(io_t *io, int flags) {
    if (PyObject_GetBuffer(io->obj, &io->view, flags) < 0) return -1;
    io->memh = buffer_memh(io->obj, io->view.buf, (size_t)io->view.len);
    return 0;
}

/* The set-up of send(conn, buf[, timeout]) and recv_into(conn, buf[, timeout]): parse the
 * arguments with `fmt` ("KO|d:name"), check the worker, hold the memory. Returns -1 with an
 * exception set. */
static int io_begin(worker_t *w, PyObject *args, const char *fmt, int flags, io_t *io) {
    memset(io, 0, sizeof *io);
    io->timeout = -1.0;
    if (!PyArg_ParseTuple(args, fmt, &io->id, &io->obj, &io->timeout)) return -1;
    if (worker_check(w) < 0) return -1;
    return io_hold(io, flags);
}

/* Release the GIL, take the worker's lock and mark the connection in use. */
static void io_enter(worker_t *w, io_t *io) {
    io->ts = PyEval_SaveThread();
    pthread_mutex_lock(&w->lock);
    io->c = conn_acquire(w, io->id);
}

/* Undo io_enter and io_hold. Returns -1 when a Python exception is pending (a signal
 * handler raised while the operation waited), else 0. */
static int io_end(worker_t *w, io_t *io) {
    if (io->c != NULL) conn_release(w, io->c);
    pthread_mutex_unlock(&w->lock);
    PyEval_RestoreThread(io->ts);
    PyBuffer_Release(&io->view);
    return PyErr_Occurred() ? -1 : 0;
}

/* ------------------------------------------------------------------ UcxWorker type */

static PyObject *conn_gone_error_impl(uint64_t id);
#define conn_gone_error conn_gone_error_impl

static PyObject *worker_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (!PyArg_ParseTuple(args, ":UcxWorker")) return NULL;
    ucp_context_h ctx = ucx_context();
    if (ctx == NULL) return NULL;
    worker_t *w = (worker_t *)type->tp_alloc(type, 0);
    if (w == NULL) return NULL;
    w->efd = -1;
    w->next_id = 1;
    const char *spin = getenv("TFYARN_UCX_SPIN_US");
    if (spin != NULL) {
        double us = strtod(spin, NULL);
        w->spin_s = us > 0 && us < 1e6 ? us * 1e-6 : 0.0;
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);

    ucp_worker_params_t wp;
    memset(&wp, 0, sizeof wp);
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
    ucs_status_t st = ucp_worker_create(ctx, &wp, &w->worker);
    if (st != UCS_OK) {
        w->worker = NULL;
        w->closed = 1;
        Py_DECREF(w);
        set_status_error(TransportUnavailableError, "ucp_worker_create", st);
        return NULL;
    }
    ucp_am_handler_param_t hp;
    memset(&hp, 0, sizeof hp);
    hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                    UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
    hp.id = TFY_AM_ID;
    hp.cb = am_cb;
    hp.arg = w;
    hp.flags = UCP_AM_FLAG_WHOLE_MSG | UCP_AM_FLAG_PERSISTENT_DATA;
    st = ucp_worker_set_am_recv_handler(w->worker, &hp);
    if (st == UCS_OK) st = ucp_worker_get_efd(w->worker, &w->efd);
    if (st == UCS_OK) {
        ucp_address_t *a = NULL;
        st = ucp_worker_get_address(w->worker, &a, &w->addr_len);
        if (st == UCS_OK) {
            w->addr = malloc(w->addr_len);
            if (w->addr != NULL) memcpy(w->addr, a, w->addr_len);
            ucp_worker_release_address(w->worker, a);
            if (w->addr == NULL) st = UCS_ERR_NO_MEMORY;
        }
    }
    if (st == UCS_OK && pthread_create(&w->thread, NULL, progress_main, w) != 0)
        st = UCS_ERR_NO_RESOURCE;
    if (st != UCS_OK) {
        ucp_worker_destroy(w->worker);
        w->worker = NULL;
        w->closed = 1;
        Py_DECREF(w);
        set_status_error(TransportUnavailableError, "worker set-up", st);
        return NULL;
    }
    w->thread_started = 1;
    return (PyObject *)w;
}

static void conn_free_resources(worker_t *w, conn_t *c) {
    for (msg_t *m = c->qh; m != NULL;) {
        msg_t *n = m->next;
        msg_discard(w, m);
        m = n;
    }
    c->qh = c->qt = NULL;
    for (msg_t *m = c->early; m != NULL;) {
        msg_t *n = m->next;
        msg_discard(w, m);
        m = n;
    }
    c->early = NULL;
    for (rkey_ent *r = c->rkeys; r != NULL;) {
        rkey_ent *n = r->next;
        ucp_rkey_destroy(r->rkey);
        free(r->name);
        free(r);
        r = n;
    }
    c->rkeys = NULL;
    free(c->rk_buf);
    c->rk_buf = NULL;
}

/* Close one connection (lock held, GIL released): BYE, flush, close the endpoint, wait for
 * the Python calls using it to leave, free it. Bounded by `timeout` seconds per step. */
static void conn_close_locked(worker_t *w, conn_t *c, double timeout, PyThreadState **ts) {
    int intr = 0;
    (void)ts; /* closing never runs signal handlers: it must finish */
    ts = NULL;
    c->closing = 1;
    pthread_cond_broadcast(&w->cond);
    if (c->ep != NULL && !conn_broken(c) && !c->peer_closed) {
        am_hdr h = {MSG_BYE, 0, c->peer_id, c->id};
        op_t op = {w, 0, UCS_OK, 0};
        ucp_request_param_t p;
        op_param(&p, &op, NULL);
        (void)wait_op(w, c, ucp_am_send_nbx(c->ep, TFY_AM_ID, &h, sizeof h, NULL, 0, &p), &op,
                      deadline_of(timeout), ts, &intr);
    }
    if (c->ep != NULL && !conn_broken(c)) {
        op_t op = {w, 0, UCS_OK, 0};
        ucp_request_param_t p;
        op_param(&p, &op, NULL);
        (void)wait_op(w, c, ucp_ep_flush_nbx(c->ep, &p), &op, deadline_of(timeout), ts, &intr);
    }
    /* Queued rendezvous descriptors reference the endpoint: release them before closing. */
    conn_free_resources(w, c);
    if (c->ep != NULL) {
        op_t op = {w, 0, UCS_OK, 0};
        ucp_request_param_t p;
        memset(&p, 0, sizeof p);
        p.op_attr_mask =
            UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        p.flags = UCP_EP_CLOSE_FLAG_FORCE;
        p.cb.send = op_send_cb;
        p.user_data = &op;
        ucp_ep_h ep = c->ep;
        c->ep = NULL;
        purge_deferred(w, ep);
        (void)wait_op(w, NULL, ucp_ep_close_nbx(ep, &p), &op, deadline_of(timeout), ts, &intr);
    }
    double until = mono_now() + timeout;
    while (c->users > 0 && mono_now() < until) wait_slice(w, until, NULL, &intr);
    (void)ts;
    if (c->users > 0) return; /* a call is stuck in UCX; leave the record (leak) */
    conn_t **pp = &w->conns;
    while (*pp != NULL && *pp != c) pp = &(*pp)->next;
    if (*pp == c) *pp = c->next;
    conn_free_resources(w, c);
    if (c->monitor_fd >= 0) close(c->monitor_fd);
    free(c);
}

static void worker_shutdown(worker_t *w, int have_gil) {
    if (w->closed) return;
    w->closed = 1;
    PyThreadState *ts = have_gil ? PyEval_SaveThread() : NULL;
    pthread_mutex_lock(&w->lock);
    while (w->conns != NULL) {
        conn_t *c = w->conns;
        conn_close_locked(w, c, 2.0, NULL);
        if (w->conns == c) w->conns = c->next; /* stuck: drop it from the list anyway */
    }
    w->stop = 1;
    if (w->worker != NULL) ucp_worker_signal(w->worker);
    pthread_mutex_unlock(&w->lock);
    if (w->thread_started) pthread_join(w->thread, NULL);
    w->thread_started = 0;
    while (w->dq_head != NULL) {
        deferred_t *d = w->dq_head;
        w->dq_head = d->next;
        free(d);
    }
    w->dq_tail = NULL;
    ucp_context_h ctx = g_ctx;
    region_t *regions = w->regions;
    w->regions = NULL;
    for (region_t *r = regions; r != NULL; r = r->next) {
        ucp_rkey_buffer_release(r->rkey_buf);
        if (r->own_memh) ucp_mem_unmap(ctx, r->memh);
    }
    if (w->worker != NULL) ucp_worker_destroy(w->worker);
    w->worker = NULL;
    free(w->addr);
    w->addr = NULL;
    if (have_gil) PyEval_RestoreThread(ts);
    /* Giving back the Python buffers needs the GIL (only the dealloc path lacks it, and
     * it always has it: dealloc runs with the GIL). */
    for (region_t *r = regions; r != NULL;) {
        region_t *n = r->next;
        PyBuffer_Release(&r->view);
        free(r->name);
        free(r);
        r = n;
    }
}

static void worker_dealloc(worker_t *w) {
    worker_shutdown(w, 1);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *worker_close(worker_t *w, PyObject *unused) {
    worker_shutdown(w, 1);
    Py_RETURN_NONE;
}

static PyObject *worker_get_address(worker_t *w, void *c) {
    if (worker_check(w) < 0) return NULL;
    return PyBytes_FromStringAndSize(w->addr, (Py_ssize_t)w->addr_len);
}

static PyObject *worker_get_closed(worker_t *w, void *c) { return PyBool_FromLong(w->closed); }

static PyObject *worker_new_conn(worker_t *w, PyObject *unused) {
    if (worker_check(w) < 0) return NULL;
    conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) return PyErr_NoMemory();
    c->w = w;
    c->monitor_fd = -1;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->lock);
    c->id = w->next_id++;
    c->next = w->conns;
    w->conns = c;
    pthread_mutex_unlock(&w->lock);
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLongLong(c->id);
}

static PyObject *worker_connect(worker_t *w, PyObject *args) {
    unsigned long long id, peer_id;
    Py_buffer addr;
    int want_peer_mode = 1;
    if (!PyArg_ParseTuple(args, "Ky*K|p:connect", &id, &addr, &peer_id, &want_peer_mode))
        return NULL;
    if (worker_check(w) < 0) {
        PyBuffer_Release(&addr);
        return NULL;
    }
    ucs_status_t st = UCS_ERR_NO_ELEM;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->lock);
    conn_t *c = find_conn(w, id);
    if (c != NULL && c->ep == NULL) {
        ucp_ep_params_t ep;
        memset(&ep, 0, sizeof ep);
        ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
        ep.address = addr.buf;
        /* Peer mode: a dead peer fails our pending operations instead of hanging them. */
        ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
        ep.err_handler.cb = ep_err_cb;
        ep.err_handler.arg = c;
        c->peer_id = peer_id;
        c->peer_mode = 1;
        st = want_peer_mode ? ucp_ep_create(w->worker, &ep, &c->ep) : UCS_ERR_UNREACHABLE;
        if (st == UCS_ERR_UNREACHABLE) {
            /* Shared-memory transports (posix, sysv) cannot detect a failed peer in this
             * UCX; the monitor socket does that job for them. */
            ep.err_mode = UCP_ERR_HANDLING_MODE_NONE;
            ep.field_mask &= ~(uint64_t)UCP_EP_PARAM_FIELD_ERR_HANDLER;
            c->peer_mode = 0;
            st = ucp_ep_create(w->worker, &ep, &c->ep);
        }
        if (st != UCS_OK) c->ep = NULL;
        ucp_worker_signal(w->worker);
    }
    pthread_mutex_unlock(&w->lock);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&addr);
    if (st != UCS_OK) {
        set_status_error(TransportError, "ucp_ep_create", st);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* monitor(id, fd): watch the (silent from now on) bootstrap socket for the peer's exit.
 * Called only once the bootstrap exchange is over: any byte read from it ends the
 * connection. */
static PyObject *worker_monitor(worker_t *w, PyObject *args) {
    unsigned long long id;
    int fd;
    if (!PyArg_ParseTuple(args, "Ki:monitor", &id, &fd)) return NULL;
    if (worker_check(w) < 0) return NULL;
    int found = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->lock);
    conn_t *c = find_conn(w, id);
    if (c != NULL && !c->closing) {
        /* A dup of our own, so Python may close (or garbage-collect) its socket object
         * without the progress thread polling a closed, possibly reused, descriptor. */
        if (c->monitor_fd >= 0) close(c->monitor_fd);
        c->monitor_fd = dup(fd);
        found = c->monitor_fd >= 0 ? 1 : -1;
        ucp_worker_signal(w->worker); /* re-poll with the new descriptor */
    }
    pthread_mutex_unlock(&w->lock);
    Py_END_ALLOW_THREADS
    if (found < 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (!found) return conn_gone_error(id);
    Py_RETURN_NONE;
}

static PyObject *worker_close_conn(worker_t *w, PyObject *args) {
    unsigned long long id;
    double timeout = 5.0;
    if (!PyArg_ParseTuple(args, "K|d:close_conn", &id, &timeout)) return NULL;
    if (w->closed) Py_RETURN_NONE;
    PyThreadState *ts = PyEval_SaveThread();
    pthread_mutex_lock(&w->lock);
    conn_t *c = find_conn(w, id);
    if (c != NULL && !c->closing) conn_close_locked(w, c, timeout, &ts);
    pthread_mutex_unlock(&w->lock);
    PyEval_RestoreThread(ts);
    Py_RETURN_NONE;
}

static PyObject *conn_gone_error_impl(uint64_t id) {
    PyErr_Format(TransportError, "ucx: connection %llu is closed", (unsigned long long)id);
    return NULL;
}

static PyObject *worker_send(worker_t *w, PyObject *args) {
    io_t io;
    if (io_begin(w, args, "KO|d:send", PyBUF_SIMPLE, &io) < 0) return NULL;
    ucs_status_t st = UCS_OK;
    int intr = 0;
    io_enter(w, &io);
    conn_t *c = io.c;
    if (c != NULL && conn_broken(c)) {
        st = c->ep_status != UCS_OK ? c->ep_status : UCS_ERR_NOT_CONNECTED;
    } else if (c != NULL) {
        uint32_t seq = c->tx_seq++;
        am_hdr h = {MSG_DATA, g_swap_seq ? seq ^ 1u : seq, c->peer_id, c->id};
        op_t op = {w, 0, UCS_OK, 0};
        ucp_request_param_t p;
        op_param(&p, &op, io.memh);
        ucs_status_ptr_t req = ucp_am_send_nbx(c->ep, TFY_AM_ID, &h, sizeof h, io.view.buf,
                                               (size_t)io.view.len, &p);
        st = wait_op(w, c, req, &op, deadline_of(io.timeout), &io.ts, &intr);
    }
    if (io_end(w, &io) < 0) return NULL;
    if (c == NULL) return conn_gone_error(io.id);
    if (st != UCS_OK) {
        set_status_error(TransportError, "send", st);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Give the queue's head to the posted receive (lock held); returns the message when it
 * is being staged (the caller copies it out once the pull completes), else NULL. */
static msg_t *take_queued(worker_t *w, conn_t *c) {
    msg_t *m = c->qh;
    c->qh = m->next;
    if (c->qh == NULL) c->qt = NULL;
    if (m->len > c->rcap) {
        c->rstate = R_TOOBIG;
        c->rlen = m->len;
        msg_discard(w, m);
    } else if (m->kind == M_EAGER) {
        memcpy(c->rbuf, m->data, m->len);
        c->rlen = m->len;
        c->rstate = R_DONE;
        msg_discard(w, m);
    } else if (m->kind == M_STAGED) {
        c->rstate = R_INFLIGHT;
        return m;
    } else {
        conn_start_rndv(w, c, m->data, m->len);
        ucp_worker_signal(w->worker);
        free(m);
    }
    return NULL;
}

/* recv_into(conn, buf, timeout) -> nbytes */
static PyObject *worker_recv_into(worker_t *w, PyObject *args) {
    io_t io;
    if (io_begin(w, args, "KO|d:recv_into", PyBUF_WRITABLE, &io) < 0) return NULL;
    enum { OK, GONE, PEER_CLOSED, BROKEN, TOOBIG, TIMEOUT, FAILED, INTR } out = OK;
    size_t got = 0;
    ucs_status_t st = UCS_OK;
    int intr = 0;
    double deadline = deadline_of(io.timeout);
    io_enter(w, &io);
    conn_t *c = io.c;
    if (c == NULL) {
        out = GONE;
    } else if (c->rstate != R_IDLE) {
        out = FAILED;
        st = UCS_ERR_BUSY; /* two receiver threads on one connection */
    } else {
        c->rbuf = io.view.buf;
        c->rcap = (size_t)io.view.len;
        c->rmemh = io.memh;
        c->rlen = 0;
        msg_t *staged = NULL;
        c->rstate = R_POSTED;
        int expired = 0;
        double spin_end = mono_now() + w->spin_s;
        for (;;) {
            /* Posted, and a message is (or became) queued: take it. */
            if (c->rstate == R_POSTED && c->qh != NULL) staged = take_queued(w, c);
            if (staged != NULL && staged->sstate != S_INFLIGHT) {
                if (staged->sstate == S_DONE) {
                    memcpy(c->rbuf, staged->data, staged->len);
                    c->rlen = staged->len;
                    c->rstate = R_DONE;
                } else {
                    c->rstate = R_ERROR;
                    c->rstatus = staged->sstatus;
                }
                msg_discard(w, staged);
                staged = NULL;
            }
            if (c->rstate == R_DONE || c->rstate == R_TOOBIG || c->rstate == R_ERROR) break;
            if (c->rstate == R_POSTED) {
                /* Nothing has started arriving: safe to give up. */
                if (c->closing) out = GONE;
                else if (c->peer_closed) out = PEER_CLOSED;
                else if (conn_broken(c)) out = BROKEN;
                else if (expired) out = TIMEOUT;
                else if (intr) out = INTR;
                if (out != OK) {
                    c->rstate = R_IDLE;
                    break;
                }
            }
            /* R_INFLIGHT: UCX is writing into the buffer; wait for it to finish. If the peer
             * failed, closing the endpoint by force completes it with an error. */
            if (c->rstate == R_INFLIGHT && c->ep != NULL && c->ep_status != UCS_OK)
                conn_force_close(w, c, c->ep_status);
            if (w->spin_s > 0 && mono_now() < spin_end) {
                ucp_worker_progress(w->worker);
                continue;
            }
            if (wait_slice(w, deadline, &io.ts, &intr)) expired = 1;
        }
        if (out == OK) {
            if (c->rstate == R_DONE) {
                got = c->rlen;
            } else if (c->rstate == R_TOOBIG) {
                out = TOOBIG;
                got = c->rlen;
            } else {
                out = FAILED;
                st = c->rstatus;
            }
            c->rstate = R_IDLE;
        }
        c->rbuf = NULL;
        c->rmemh = NULL;
        if (out == BROKEN) st = c->ep_status != UCS_OK ? c->ep_status : UCS_ERR_NOT_CONNECTED;
    }
    if (io_end(w, &io) < 0) return NULL;
    switch (out) {
    case OK: return PyLong_FromSize_t(got);
    case GONE: return conn_gone_error(io.id);
    case PEER_CLOSED:
        PyErr_SetString(TransportError, "ucx: the peer closed the connection");
        return NULL;
    case TOOBIG:
        PyErr_Format(FrameError,
                     "ucx: received a message of %zu bytes into a buffer of %zd bytes; the "
                     "message was discarded (pass a buffer at least as large, or use recv())",
                     got, io.view.len);
        return NULL;
    case TIMEOUT:
        PyErr_Format(TransportError, "ucx: no message within %.1f s", io.timeout);
        return NULL;
    default: set_status_error(TransportError, "recv", st); return NULL;
    }
}

/* peek(conn, timeout) -> length of the next message (waits for one to arrive). */
static PyObject *worker_peek(worker_t *w, PyObject *args) {
    unsigned long long id;
    double timeout = -1.0;
    if (!PyArg_ParseTuple(args, "K|d:peek", &id, &timeout)) return NULL;
    if (worker_check(w) < 0) return NULL;
    enum { OK, GONE, PEER_CLOSED, BROKEN, TIMEOUT } out = OK;
    size_t len = 0;
    ucs_status_t st = UCS_OK;
    int intr = 0;
    double deadline = deadline_of(timeout);
    PyThreadState *ts = PyEval_SaveThread();
    pthread_mutex_lock(&w->lock);
    conn_t *c = conn_acquire(w, id);
    if (c == NULL) {
        out = GONE;
    } else {
        int expired = 0;
        while (c->qh == NULL && !intr) {
            if (c->closing) out = GONE;
            else if (c->peer_closed) out = PEER_CLOSED;
            else if (conn_broken(c)) out = BROKEN;
            else if (expired) out = TIMEOUT;
            if (out != OK) break;
            if (wait_slice(w, deadline, &ts, &intr)) expired = 1;
        }
        if (c->qh != NULL) len = c->qh->len;
        if (out == BROKEN) st = c->ep_status != UCS_OK ? c->ep_status : UCS_ERR_NOT_CONNECTED;
    }
    if (c != NULL) conn_release(w, c);
    pthread_mutex_unlock(&w->lock);
    PyEval_RestoreThread(ts);
    if (PyErr_Occurred()) return NULL;
    switch (out) {
    case OK: return PyLong_FromSize_t(len);
    case GONE: return conn_gone_error(id);
    case PEER_CLOSED:
        PyErr_SetString(TransportError, "ucx: the peer closed the connection");
        return NULL;
    case TIMEOUT:
        PyErr_Format(TransportError, "ucx: no message within %.1f s", timeout);
        return NULL;
    default: set_status_error(TransportError, "recv", st); return NULL;
    }
}

/* Find or fetch the remote key for `name` (lock held, GIL released). Returns NULL with
 * *err describing the failure. */
static rkey_ent *conn_rkey(worker_t *w, conn_t *c, const char *name, double deadline,
                           PyThreadState **ts, int *intr, const char **err,
                           ucs_status_t *st) {
    for (rkey_ent *r = c->rkeys; r != NULL; r = r->next)
        if (strcmp(r->name, name) == 0) return r;
    am_hdr h = {MSG_RKEY_REQ, 0, c->peer_id, c->id};
    op_t op = {w, 0, UCS_OK, 0};
    ucp_request_param_t p;
    op_param(&p, &op, NULL);
    c->rk_state = 1;
    *st = wait_op(w, c, ucp_am_send_nbx(c->ep, TFY_AM_ID, &h, sizeof h, name, strlen(name), &p),
                  &op, deadline, ts, intr);
    if (*st != UCS_OK) {
        c->rk_state = 0;
        *err = "remote key request";
        return NULL;
    }
    int expired = 0;
    while (c->rk_state != 2 && !conn_broken(c) && !c->peer_closed && !expired && !*intr)
        expired = wait_slice(w, deadline, ts, intr);
    if (c->rk_state != 2) {
        c->rk_state = 0;
        *err = "remote key request";
        *st = expired ? UCS_ERR_TIMED_OUT
                      : (c->ep_status != UCS_OK ? c->ep_status : UCS_ERR_CONNECTION_RESET);
        return NULL;
    }
    c->rk_state = 0;
    if (c->rk_status != 0 || c->rk_len < 16) {
        *err = c->rk_status == 1 ? "no-region" : "remote key reply";
        *st = UCS_ERR_NO_ELEM;
        return NULL;
    }
    rkey_ent *e = calloc(1, sizeof *e);
    char *nm = strdup(name);
    if (e == NULL || nm == NULL) {
        free(e);
        free(nm);
        *err = "remote key cache";
        *st = UCS_ERR_NO_MEMORY;
        return NULL;
    }
    memcpy(&e->raddr, c->rk_buf, 8);
    memcpy(&e->rlen, (char *)c->rk_buf + 8, 8);
    *st = ucp_ep_rkey_unpack(c->ep, (char *)c->rk_buf + 16, &e->rkey);
    if (*st != UCS_OK) {
        free(e);
        free(nm);
        *err = "ucp_ep_rkey_unpack";
        return NULL;
    }
    e->name = nm;
    e->next = c->rkeys;
    c->rkeys = e;
    return e;
}

/* rma(conn, buf, name, offset, is_put, timeout) -> nbytes */
static PyObject *worker_rma(worker_t *w, PyObject *args) {
    io_t io;
    memset(&io, 0, sizeof io);
    io.timeout = -1.0;
    const char *name;
    Py_ssize_t name_len;
    unsigned long long offset;
    int is_put;
    if (!PyArg_ParseTuple(args, "KOs#Kp|d:rma", &io.id, &io.obj, &name, &name_len, &offset,
                          &is_put, &io.timeout))
        return NULL;
    if (worker_check(w) < 0) return NULL;
    if (name_len == 0 || name_len > 200) {
        PyErr_SetString(PyExc_ValueError, "ucx: region names are 1 to 200 bytes");
        return NULL;
    }
    if (io_hold(&io, is_put ? PyBUF_SIMPLE : PyBUF_WRITABLE) < 0) return NULL;
    const char *err = NULL;
    ucs_status_t st = UCS_OK;
    int intr = 0;
    uint64_t rlen = 0;
    double deadline = deadline_of(io.timeout);
    io_enter(w, &io);
    conn_t *c = io.c;
    if (c == NULL) {
        /* gone: reported below */
    } else if (conn_broken(c) || c->peer_closed) {
        err = "put/get";
        st = c->ep_status != UCS_OK ? c->ep_status : UCS_ERR_CONNECTION_RESET;
    } else {
        rkey_ent *rk = conn_rkey(w, c, name, deadline, &io.ts, &intr, &err, &st);
        if (rk != NULL) {
            rlen = rk->rlen;
            if (offset > rk->rlen || (uint64_t)io.view.len > rk->rlen - offset) {
                err = "bounds";
            } else if (io.view.len > 0) {
                op_t op = {w, 0, UCS_OK, 0};
                ucp_request_param_t p;
                op_param(&p, &op, io.memh);
                void *buf = io.view.buf;
                size_t len = (size_t)io.view.len;
                uint64_t raddr = rk->raddr + offset;
                ucs_status_ptr_t req = is_put ? ucp_put_nbx(c->ep, buf, len, raddr, rk->rkey, &p)
                                              : ucp_get_nbx(c->ep, buf, len, raddr, rk->rkey, &p);
                st = wait_op(w, c, req, &op, deadline, &io.ts, &intr);
                if (st == UCS_OK && is_put) {
                    /* put returns once the data is in the peer's memory: flush the endpoint
                     * (remote completion), not just the local send. */
                    op_t fop = {w, 0, UCS_OK, 0};
                    ucp_request_param_t fp;
                    op_param(&fp, &fop, NULL);
                    st = wait_op(w, c, ucp_ep_flush_nbx(c->ep, &fp), &fop, deadline, &io.ts,
                                 &intr);
                }
                if (st != UCS_OK) err = is_put ? "put" : "get";
            }
        }
    }
    Py_ssize_t n = io.view.len;
    if (io_end(w, &io) < 0) return NULL;
    if (c == NULL) return conn_gone_error(io.id);
    if (err != NULL) {
        if (strcmp(err, "no-region") == 0)
            PyErr_Format(TransportError,
                         "ucx: the peer has no region named '%s' (register it on the peer's "
                         "listener or comm first)",
                         name);
        else if (strcmp(err, "bounds") == 0)
            PyErr_Format(PyExc_ValueError,
                         "ucx: %zd bytes at offset %llu do not fit in the peer's region '%s' "
                         "of %llu bytes",
                         n, offset, name, (unsigned long long)rlen);
        else
            set_status_error(TransportError, err, st);
        return NULL;
    }
    return PyLong_FromSsize_t(n);
}

/* register(name, buf): expose writable memory for peers' put/get. */
static PyObject *worker_register(worker_t *w, PyObject *args) {
    const char *name;
    Py_ssize_t name_len;
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "s#O:register", &name, &name_len, &obj)) return NULL;
    if (worker_check(w) < 0) return NULL;
    if (name_len == 0 || name_len > 200) {
        PyErr_SetString(PyExc_ValueError, "ucx: region names are 1 to 200 bytes");
        return NULL;
    }
    region_t *r = calloc(1, sizeof *r);
    if (r == NULL) return PyErr_NoMemory();
    if (PyObject_GetBuffer(obj, &r->view, PyBUF_WRITABLE) < 0) {
        free(r);
        return NULL;
    }
    r->addr = r->view.buf;
    r->len = (size_t)r->view.len;
    r->name = strdup(name);
    ucp_context_h ctx = ucx_context();
    ucs_status_t st = UCS_OK;
    if (ctx == NULL || r->name == NULL) goto fail;
    r->memh = buffer_memh(obj, r->addr, r->len); /* a pool slab is registered already */
    if (r->memh == NULL) {
        st = mem_map(r->addr, r->len, &r->memh);
        if (st != UCS_OK) {
            set_status_error(TransportError, "ucp_mem_map", st);
            goto fail;
        }
        r->own_memh = 1;
    }
    st = ucp_rkey_pack(ctx, r->memh, &r->rkey_buf, &r->rkey_len);
    if (st != UCS_OK) {
        set_status_error(TransportError, "ucp_rkey_pack", st);
        goto fail;
    }
    int dup = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->lock);
    dup = find_region(w, name) != NULL;
    if (!dup) {
        r->next = w->regions;
        w->regions = r;
    }
    pthread_mutex_unlock(&w->lock);
    Py_END_ALLOW_THREADS
    if (dup) {
        PyErr_Format(PyExc_ValueError,
                     "ucx: a region named '%s' is already registered; region names are "
                     "write-once (peers cache their keys), pick another name",
                     name);
        goto fail;
    }
    Py_RETURN_NONE;
fail:
    if (r->rkey_buf != NULL) ucp_rkey_buffer_release(r->rkey_buf);
    if (r->own_memh) ucp_mem_unmap(ctx, r->memh);
    PyBuffer_Release(&r->view);
    free(r->name);
    free(r);
    return NULL;
}

/* transport(conn) -> description of the lanes UCX chose ("tcp", "posix", "rc_mlx5", ...). */
static PyObject *worker_transport(worker_t *w, PyObject *args) {
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K:transport", &id)) return NULL;
    if (worker_check(w) < 0) return NULL;
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    if (f == NULL) return PyErr_SetFromErrno(PyExc_OSError);
    int found = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&w->lock);
    conn_t *c = find_conn(w, id);
    if (c != NULL && c->ep != NULL) {
        ucp_ep_print_info(c->ep, f);
        found = 1;
    }
    pthread_mutex_unlock(&w->lock);
    Py_END_ALLOW_THREADS
    fclose(f);
    PyObject *out = found ? PyUnicode_DecodeUTF8(text, (Py_ssize_t)size, "replace") : NULL;
    free(text);
    if (!found) return conn_gone_error(id);
    return out;
}

static PyMethodDef worker_methods[] = {
    {"new_conn", (PyCFunction)worker_new_conn, METH_NOARGS,
     "new_conn() -> id of a new (not yet connected) connection record"},
    {"connect", (PyCFunction)worker_connect, METH_VARARGS,
     "connect(id, peer_worker_address, peer_conn_id, peer_mode=True): create the endpoint "
     "(peer_mode: try UCX peer-failure detection first)"},
    {"monitor", (PyCFunction)worker_monitor, METH_VARARGS,
     "monitor(id, fd): treat EOF (or any data) on socket fd as the peer's exit"},
    {"close_conn", (PyCFunction)worker_close_conn, METH_VARARGS,
     "close_conn(id, timeout=5.0): say goodbye, flush and close the endpoint"},
    {"send", (PyCFunction)worker_send, METH_VARARGS, "send(id, buffer, timeout=-1)"},
    {"recv_into", (PyCFunction)worker_recv_into, METH_VARARGS,
     "recv_into(id, buffer, timeout=-1) -> nbytes"},
    {"peek", (PyCFunction)worker_peek, METH_VARARGS,
     "peek(id, timeout=-1) -> size of the next message (waits for it)"},
    {"rma", (PyCFunction)worker_rma, METH_VARARGS,
     "rma(id, buffer, region, offset, is_put, timeout=-1) -> nbytes"},
    {"register", (PyCFunction)worker_register, METH_VARARGS,
     "register(name, buffer): expose memory for peers' put/get"},
    {"transport", (PyCFunction)worker_transport, METH_VARARGS,
     "transport(id) -> ucp_ep_print_info text of the connection"},
    {"close", (PyCFunction)worker_close, METH_NOARGS, "Close every connection and the worker."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef worker_getset[] = {
    {"address", (getter)worker_get_address, NULL, "Packed UCP worker address (bytes).", NULL},
    {"closed", (getter)worker_get_closed, NULL, "Whether close() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject worker_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tfyarn._native.UcxWorker",
    .tp_basicsize = sizeof(worker_t),
    .tp_dealloc = (destructor)worker_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A UCP worker with its progress thread (see tfyarn/transport/ucx.py).",
    .tp_methods = worker_methods,
    .tp_getset = worker_getset,
    .tp_new = worker_new,
};

static PyObject *py_ucx_version(PyObject *m, PyObject *unused) {
    unsigned major, minor, release;
    ucp_get_version(&major, &minor, &release);
    return Py_BuildValue("(III)", major, minor, release);
}

static PyObject *py_ucx_context_info(PyObject *m, PyObject *unused) {
    ucp_context_h ctx = ucx_context();
    if (ctx == NULL) return NULL;
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    if (f == NULL) return PyErr_SetFromErrno(PyExc_OSError);
    ucp_context_print_info(ctx, f);
    fclose(f);
    PyObject *out = PyUnicode_DecodeUTF8(text, (Py_ssize_t)size, "replace");
    free(text);
    return out;
}

static PyMethodDef ucx_functions[] = {
    {"ucx_version", py_ucx_version, METH_NOARGS, "UCX library version (major, minor, release)."},
    {"ucx_context_info", py_ucx_context_info, METH_NOARGS,
     "ucp_context_print_info text (creates the process-wide context if needed)."},
    {NULL, NULL, 0, NULL},
};

int tfy_ucx_setup(PyObject *module) {
    PyObject *errors = PyImport_ImportModule("tfyarn.errors");
    if (errors == NULL) return -1;
    TransportError = PyObject_GetAttrString(errors, "TransportError");
    FrameError = PyObject_GetAttrString(errors, "FrameError");
    TransportUnavailableError = PyObject_GetAttrString(errors, "TransportUnavailableError");
    Py_DECREF(errors);
    if (TransportError == NULL || FrameError == NULL || TransportUnavailableError == NULL)
        return -1;
    const char *swap = getenv("TFYARN_UCX_TEST_SWAP_SEQ");
    g_swap_seq = swap != NULL && strcmp(swap, "1") == 0;
    if (PyType_Ready(&worker_type) < 0) return -1;
    Py_INCREF(&worker_type);
    if (PyModule_AddObject(module, "UcxWorker", (PyObject *)&worker_type) < 0) return -1;
    if (PyModule_AddFunctions(module, ucx_functions) < 0) return -1;
    Py_INCREF(Py_True);
    return PyModule_AddObject(module, "HAVE_UCX", Py_True);
}

#endif /* TFYARN_HAVE_UCX */
