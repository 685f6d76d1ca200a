/*
 * ferry's own declarations of the part of Slurm's public SPANK API that the plugin
 * uses, written from the documented interface (spank(8) and the SPANK API reference).
 * tests/spank_header.rs checks every value and layout here against the system's
 * <slurm/spank.h> when one is installed.
 *
 * SLURM_VERSION_NUMBER is passed in by build.rs (-DSLURM_VERSION_NUMBER=0xMMmmuu).
 */
#ifndef FERRY_SPANK_H
#define FERRY_SPANK_H

#include <sys/types.h>
#include <stdint.h>

#ifndef SLURM_VERSION_NUMBER
#error "SLURM_VERSION_NUMBER must be defined by the build (see build.rs)"
#endif

typedef struct spank_handle *spank_t;

typedef int (spank_f)(spank_t spank, int ac, char *argv[]);

/* Items for spank_get_item(); the comment gives the variadic argument types. */
enum spank_item {
	S_JOB_UID,                /* uid_t *                  */
	S_JOB_GID,                /* gid_t *                  */
	S_JOB_ID,                 /* uint32_t *               */
	S_JOB_STEPID,             /* uint32_t *               */
	S_JOB_NNODES,             /* uint32_t *               */
	S_JOB_NODEID,             /* uint32_t *               */
	S_JOB_LOCAL_TASK_COUNT,   /* uint32_t *               */
	S_JOB_TOTAL_TASK_COUNT,   /* uint32_t *               */
	S_JOB_NCPUS,              /* uint16_t *               */
	S_JOB_ARGV,               /* int *, char ***          */
	S_JOB_ENV,                /* char ***                 */
	S_TASK_ID,                /* int *                    */
	S_TASK_GLOBAL_ID,         /* uint32_t *               */
	S_TASK_EXIT_STATUS,       /* int *                    */
	S_TASK_PID,               /* pid_t *                  */
	S_JOB_PID_TO_GLOBAL_ID,   /* pid_t, uint32_t *        */
	S_JOB_PID_TO_LOCAL_ID,    /* pid_t, uint32_t *        */
	S_JOB_LOCAL_TO_GLOBAL_ID, /* uint32_t, uint32_t *     */
	S_JOB_GLOBAL_TO_LOCAL_ID, /* uint32_t, uint32_t *     */
	S_JOB_SUPPLEMENTARY_GIDS, /* gid_t **, int *          */
	S_SLURM_VERSION,          /* char **                  */
	S_SLURM_VERSION_MAJOR,    /* char **                  */
	S_SLURM_VERSION_MINOR,    /* char **                  */
	S_SLURM_VERSION_MICRO,    /* char **                  */
	S_STEP_CPUS_PER_TASK,     /* uint32_t *               */
	S_JOB_ALLOC_CORES,        /* char **                  */
	S_JOB_ALLOC_MEM,          /* uint64_t *               */
	S_STEP_ALLOC_CORES,       /* char **                  */
	S_STEP_ALLOC_MEM,         /* uint64_t *               */
	S_SLURM_RESTART_COUNT,    /* uint32_t *               */
	S_JOB_ARRAY_ID,           /* uint32_t *               */
	S_JOB_ARRAY_TASK_ID       /* uint32_t *               */
};
typedef enum spank_item spank_item_t;

/* Since Slurm 21.08 the SPANK errors are Slurm error numbers from 3000 on (they live
 * in slurm_errno.h); before, they counted from 1. Success is 0 in both. */
#if SLURM_VERSION_NUMBER >= 0x150800
#define FERRY_ESPANK_BASE 3000
#else
#define FERRY_ESPANK_BASE 1
#endif
enum spank_err {
	ESPANK_SUCCESS     = 0,
	ESPANK_ERROR       = FERRY_ESPANK_BASE,
	ESPANK_BAD_ARG     = FERRY_ESPANK_BASE + 1,
	ESPANK_NOT_TASK    = FERRY_ESPANK_BASE + 2,
	ESPANK_ENV_EXISTS  = FERRY_ESPANK_BASE + 3,
	ESPANK_ENV_NOEXIST = FERRY_ESPANK_BASE + 4,
	ESPANK_NOSPACE     = FERRY_ESPANK_BASE + 5,
	ESPANK_NOT_REMOTE  = FERRY_ESPANK_BASE + 6,
	ESPANK_NOEXIST     = FERRY_ESPANK_BASE + 7,
	ESPANK_NOT_EXECD   = FERRY_ESPANK_BASE + 8,
	ESPANK_NOT_AVAIL   = FERRY_ESPANK_BASE + 9,
	ESPANK_NOT_LOCAL   = FERRY_ESPANK_BASE + 10
};
typedef enum spank_err spank_err_t;

enum spank_context {
	S_CTX_ERROR,      /* error                                  */
	S_CTX_LOCAL,      /* srun                                   */
	S_CTX_REMOTE,     /* slurmstepd                             */
	S_CTX_ALLOCATOR,  /* sbatch, salloc                         */
	S_CTX_SLURMD,     /* slurmd                                 */
	S_CTX_JOB_SCRIPT  /* prolog/epilog                          */
};
typedef enum spank_context spank_context_t;

typedef int (*spank_opt_cb_f)(int val, const char *optarg, int remote);

struct spank_option {
	char *name;
	char *arginfo;
	char *usage;
	int has_arg;
	int val;
	spank_opt_cb_f cb;
};

spank_context_t spank_context(void);
spank_err_t spank_option_register(spank_t spank, struct spank_option *opt);
spank_err_t spank_get_item(spank_t spank, spank_item_t item, ...);
spank_err_t spank_getenv(spank_t spank, const char *var, char *buf, int len);
spank_err_t spank_setenv(spank_t spank, const char *var, const char *val, int overwrite);
spank_err_t spank_unsetenv(spank_t spank, const char *var);

void slurm_error(const char *format, ...);
void slurm_info(const char *format, ...);
void slurm_verbose(const char *format, ...);
void slurm_debug(const char *format, ...);

#endif
