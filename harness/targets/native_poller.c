/* A native thread that polls an epoll set and works between polls, like the
 * poller threads of gRPC core or libzmq: it has no Python thread state. */
#include <pthread.h>
#include <sys/epoll.h>
#include <unistd.h>

struct poller_args {
    int gap_ms;
    int rounds;
};

static struct poller_args args;

static void *poll_then_work(void *unused)
{
    (void)unused;
    int ep = epoll_create1(0);
    struct epoll_event ev;
    for (int i = 0; i < args.rounds; i++) {
        epoll_wait(ep, &ev, 1, 0);
        usleep(args.gap_ms * 1000);
    }
    epoll_wait(ep, &ev, 1, 0);
    close(ep);
    return NULL;
}

int start_poller(int gap_ms, int rounds)
{
    pthread_t thread;
    args.gap_ms = gap_ms;
    args.rounds = rounds;
    return pthread_create(&thread, NULL, poll_then_work, NULL);
}
