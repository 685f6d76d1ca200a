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

enum spank_err {
	ESPANK_SUCCESS     = 0,
	ESPANK_ERROR       = 1,
	ESPANK_BAD_ARG     = 2,
	ESPANK_NOT_TASK    = 3,
	ESPANK_ENV_EXISTS  = 4,
	ESPANK_ENV_NOEXIST = 5,
	ESPANK_NOSPACE     = 6,
	ESPANK_NOT_REMOTE  = 7,
	ESPANK_NOEXIST     = 8,
	ESPANK_NOT_EXECD   = 9,
	ESPANK_NOT_AVAIL   = 10,
	ESPANK_NOT_LOCAL   = 11
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
