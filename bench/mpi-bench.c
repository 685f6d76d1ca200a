/* MPI micro-benchmarks for bench/mpi: the same binary runs on the host and inside
 * the image, so any difference is what the container costs.
 *   mpi-bench init         MPI_Init + MPI_Finalize (step start)
 *   mpi-bench p2p          ranks 0 and 1: ping-pong latency (8 B) and bandwidth (1 MiB)
 *   mpi-bench allreduce    all ranks: MPI_Allreduce of 8 B and of 1 MiB
 * Rank 0 prints "name value unit" lines. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SMALL = 8, LARGE = 1 << 20, WARMUP = 100 };

static double pingpong(int rank, char *buf, int bytes, int iters) {
    MPI_Status st;
    double start = 0;
    for (int i = 0; i < WARMUP + iters; i++) {
        if (i == WARMUP) {
            MPI_Barrier(MPI_COMM_WORLD);
            start = MPI_Wtime();
        }
        if (rank == 0) {
            MPI_Send(buf, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD, &st);
        } else if (rank == 1) {
            MPI_Recv(buf, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD, &st);
            MPI_Send(buf, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
        }
    }
    return (MPI_Wtime() - start) / iters / 2; /* one way */
}

/* Rank 0 streams `iters` messages of `bytes` to rank 1, which acknowledges the lot. */
static double bandwidth(int rank, char *buf, int bytes, int iters) {
    enum { WINDOW = 16 };
    MPI_Request req[WINDOW];
    MPI_Status st[WINDOW];
    char ack = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime();
    for (int i = 0; i < iters; i += WINDOW) {
        int n = iters - i < WINDOW ? iters - i : WINDOW;
        for (int j = 0; j < n; j++) {
            if (rank == 0)
                MPI_Isend(buf, bytes, MPI_CHAR, 1, 1, MPI_COMM_WORLD, &req[j]);
            else if (rank == 1)
                MPI_Irecv(buf, bytes, MPI_CHAR, 0, 1, MPI_COMM_WORLD, &req[j]);
        }
        if (rank < 2)
            MPI_Waitall(n, req, st);
    }
    if (rank == 0)
        MPI_Recv(&ack, 1, MPI_CHAR, 1, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    else if (rank == 1)
        MPI_Send(&ack, 1, MPI_CHAR, 0, 2, MPI_COMM_WORLD);
    double secs = MPI_Wtime() - start;
    return (double)bytes * iters / secs / 1e6; /* MB/s */
}

static double allreduce(int bytes, int iters) {
    int n = bytes / (int)sizeof(double);
    double *in = calloc(n, sizeof(double)), *out = calloc(n, sizeof(double));
    for (int i = 0; i < n; i++)
        in[i] = i;
    for (int i = 0; i < WARMUP / 10; i++)
        MPI_Allreduce(in, out, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime();
    for (int i = 0; i < iters; i++)
        MPI_Allreduce(in, out, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double secs = (MPI_Wtime() - start) / iters;
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (out[n - 1] != (double)(n - 1) * size) {
        fprintf(stderr, "mpi-bench: allreduce gave a wrong result\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    free(in);
    free(out);
    return secs;
}

int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *mode = argc > 1 ? argv[1] : "init";
    char *buf = calloc(1, LARGE);
    if (strcmp(mode, "p2p") == 0) {
        if (size < 2) {
            fprintf(stderr, "mpi-bench: p2p needs 2 ranks\n");
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
        double lat = pingpong(rank, buf, SMALL, 5000);
        double bw = bandwidth(rank, buf, LARGE, 400);
        if (rank == 0)
            printf("latency_8B %.3f us\nbandwidth_1MiB %.1f MB/s\n", lat * 1e6, bw);
    } else if (strcmp(mode, "allreduce") == 0) {
        double small = allreduce(SMALL, 2000), large = allreduce(LARGE, 100);
        if (rank == 0)
            printf("allreduce_8B %.3f us\nallreduce_1MiB %.1f us\n", small * 1e6, large * 1e6);
    } else if (strcmp(mode, "init") != 0) {
        fprintf(stderr, "mpi-bench: unknown mode %s (init, p2p, allreduce)\n", mode);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    free(buf);
    MPI_Finalize();
    return 0;
}
