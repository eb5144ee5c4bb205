/* Provokes a QP error on uroce's libibverbs and expects it as asynchronous events on the
 * context's async_fd, through poll(2): an RC QP whose peer (an address where nobody listens)
 * never answers runs out of retries, goes to ERR (IBV_EVENT_QP_FATAL), and the flushed WRs
 * overflow its one-entry CQ (IBV_EVENT_CQ_ERR). Also checks the fork answers. Prints "ok"
 * and exits 0 on success; any failure prints what and exits 1.
 * Built and run by tests/async_events.rs. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#define CHECK(c, ...) do { if (!(c)) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); return 1; } } while (0)

static int next_event(struct ibv_context *ctx, struct ibv_async_event *ev) {
    struct pollfd p = { .fd = ctx->async_fd, .events = POLLIN };
    int r = poll(&p, 1, 10000);
    if (r != 1 || !(p.revents & POLLIN)) {
        fprintf(stderr, "async_fd did not poll readable within 10 s (poll %d)\n", r);
        return -1;
    }
    if (ibv_get_async_event(ctx, ev)) {
        fprintf(stderr, "ibv_get_async_event: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *peer = argc > 1 ? argv[1] : "127.0.73.2";
    CHECK(ibv_fork_init() == 0, "ibv_fork_init");
    CHECK(ibv_is_fork_initialized() == IBV_FORK_UNNEEDED, "ibv_is_fork_initialized %d",
          ibv_is_fork_initialized());

    struct ibv_device **list = ibv_get_device_list(NULL);
    CHECK(list && list[0], "no device");
    struct ibv_context *ctx = ibv_open_device(list[0]);
    CHECK(ctx, "ibv_open_device: %s", strerror(errno));
    CHECK(ctx->async_fd >= 0, "no async_fd");

    /* Non-blocking: nothing pending yet, so EAGAIN, as rdma-core's read of the async fd. */
    int fl = fcntl(ctx->async_fd, F_GETFL);
    CHECK(fcntl(ctx->async_fd, F_SETFL, fl | O_NONBLOCK) == 0, "fcntl");
    struct ibv_async_event ev;
    errno = 0;
    CHECK(ibv_get_async_event(ctx, &ev) == -1 && errno == EAGAIN,
          "an event before any error, or no EAGAIN (errno %d)", errno);

    struct ibv_pd *pd = ibv_alloc_pd(ctx);
    CHECK(pd, "ibv_alloc_pd: %s", strerror(errno));
    static char buf[64];
    struct ibv_mr *mr = ibv_reg_mr(pd, buf, sizeof buf, IBV_ACCESS_LOCAL_WRITE);
    CHECK(mr, "ibv_reg_mr");
    struct ibv_cq *cq = ibv_create_cq(ctx, 1, NULL, NULL, 0);
    CHECK(cq, "ibv_create_cq");
    struct ibv_qp_init_attr ia = {
        .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
        .cap = { .max_send_wr = 4, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1 },
        .sq_sig_all = 1,
    };
    struct ibv_qp *qp = ibv_create_qp(pd, &ia);
    CHECK(qp, "ibv_create_qp");

    struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = 1 };
    CHECK(!ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                         IBV_QP_ACCESS_FLAGS), "INIT");
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = IBV_MTU_1024;
    a.dest_qp_num = 0x123;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;
    a.ah_attr.is_global = 1;
    a.ah_attr.port_num = 1;
    a.ah_attr.grh.sgid_index = 1;
    a.ah_attr.grh.hop_limit = 64;
    struct in_addr ip;
    CHECK(inet_pton(AF_INET, peer, &ip) == 1, "peer address %s", peer);
    /* IPv4-mapped GID, as rxe's GID table. */
    a.ah_attr.grh.dgid.raw[10] = 0xff;
    a.ah_attr.grh.dgid.raw[11] = 0xff;
    memcpy(&a.ah_attr.grh.dgid.raw[12], &ip, 4);
    CHECK(!ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                         IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER), "RTR");
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 8; /* 4.096 us * 2^8 ≈ 1 ms */
    a.retry_cnt = 1;
    a.rnr_retry = 1;
    a.max_rd_atomic = 1;
    CHECK(!ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                         IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC), "RTS");

    /* Two signaled SENDs into a one-entry CQ: the first fails with RETRY_EXC_ERR, the
     * second's flush overflows the CQ. */
    struct ibv_sge sge = { .addr = (uintptr_t)buf, .length = 8, .lkey = mr->lkey };
    struct ibv_send_wr wr[2], *bad;
    for (int i = 0; i < 2; i++) {
        memset(&wr[i], 0, sizeof wr[i]);
        wr[i].wr_id = i;
        wr[i].sg_list = &sge;
        wr[i].num_sge = 1;
        wr[i].opcode = IBV_WR_SEND;
        wr[i].next = i == 0 ? &wr[1] : NULL;
    }
    CHECK(!ibv_post_send(qp, wr, &bad), "ibv_post_send");

    int saw_qp = 0, saw_cq = 0;
    for (int i = 0; i < 2; i++) {
        if (next_event(ctx, &ev))
            return 1;
        if (ev.event_type == IBV_EVENT_QP_FATAL) {
            CHECK(ev.element.qp == qp, "QP_FATAL names another QP");
            saw_qp++;
        } else if (ev.event_type == IBV_EVENT_CQ_ERR) {
            CHECK(ev.element.cq == cq, "CQ_ERR names another CQ");
            saw_cq++;
        } else {
            CHECK(0, "unexpected event %s", ibv_event_type_str(ev.event_type));
        }
        ibv_ack_async_event(&ev);
    }
    CHECK(saw_qp == 1 && saw_cq == 1, "events: QP_FATAL %d, CQ_ERR %d", saw_qp, saw_cq);
    /* Each raised once: nothing more pending. */
    errno = 0;
    CHECK(ibv_get_async_event(ctx, &ev) == -1 && errno == EAGAIN, "a third event");

    struct ibv_qp_init_attr qi;
    CHECK(!ibv_query_qp(qp, &a, IBV_QP_STATE, &qi) && a.qp_state == IBV_QPS_ERR,
          "QP not in ERR");
    struct ibv_wc wc;
    CHECK(ibv_poll_cq(cq, 1, &wc) < 0, "an overrun CQ must fail ibv_poll_cq");

    /* Destroys return: every event was acknowledged. */
    CHECK(!ibv_destroy_qp(qp), "ibv_destroy_qp");
    CHECK(!ibv_destroy_cq(cq), "ibv_destroy_cq");
    CHECK(!ibv_dereg_mr(mr), "ibv_dereg_mr");
    CHECK(!ibv_dealloc_pd(pd), "ibv_dealloc_pd");
    CHECK(!ibv_close_device(ctx), "ibv_close_device");
    ibv_free_device_list(list);
    puts("ok");
    return 0;
}
