/* Polls a CQ from a pthread key destructor, which glibc runs after the exiting thread's
 * thread_local destructors (uroce's poll_cq buffer among them): ibv_poll_cq must still
 * answer (0, the CQ is empty), not abort. Prints "ok" and exits 0 on success; any failure
 * prints what and exits 1. Built and run by tests/thread_exit.rs. */
#include <errno.h>
#include <infiniband/verbs.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define CHECK(c, ...) do { if (!(c)) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); return 1; } } while (0)

static struct ibv_cq *cq;
static pthread_key_t key;
static volatile int polled = -2;

static void at_exit_of_thread(void *v) {
    (void)v;
    struct ibv_wc wc;
    polled = ibv_poll_cq(cq, 1, &wc);
}

static void *thread(void *arg) {
    (void)arg;
    struct ibv_wc wc;
    /* A first poll on this thread: its buffer exists from here on. */
    if (ibv_poll_cq(cq, 1, &wc) != 0)
        return (void *)1;
    pthread_setspecific(key, (void *)1);
    return NULL;
}

int main(void) {
    struct ibv_device **list = ibv_get_device_list(NULL);
    CHECK(list && list[0], "no device");
    struct ibv_context *ctx = ibv_open_device(list[0]);
    CHECK(ctx, "ibv_open_device: %s", strerror(errno));
    cq = ibv_create_cq(ctx, 4, NULL, NULL, 0);
    CHECK(cq, "ibv_create_cq: %s", strerror(errno));
    CHECK(pthread_key_create(&key, at_exit_of_thread) == 0, "pthread_key_create");
    pthread_t t;
    void *r;
    CHECK(pthread_create(&t, NULL, thread, NULL) == 0, "pthread_create");
    CHECK(pthread_join(t, &r) == 0 && r == NULL, "the thread's first poll failed");
    CHECK(polled == 0, "ibv_poll_cq at thread exit returned %d, expected 0", polled);
    CHECK(ibv_destroy_cq(cq) == 0, "ibv_destroy_cq");
    CHECK(ibv_close_device(ctx) == 0, "ibv_close_device");
    ibv_free_device_list(list);
    printf("ok\n");
    return 0;
}
