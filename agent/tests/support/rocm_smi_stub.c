/* TEST SUPPORT ONLY: a stub librocm_smi64 exporting the ROCm SMI symbols the agent uses,
 * so the real rocm.rs code path (libloading, symbol resolution, struct layouts) runs
 * without an AMD GPU. It is not ROCm SMI: it answers only what the tests ask.
 *
 * Two AMD Instinct MI300X (192 GiB, gfx942 in the fake KFD topology the tests write),
 * joined by xGMI, one on NUMA node 0 and one on NUMA node 1. Signatures, enum values and
 * struct layouts follow rocm_smi.h; the default is the ROCm 6 library (version 7.3.0,
 * rsmi_frequencies_t with has_deep_sleep and 33 entries).
 *
 * Compile-time switches make the variants:
 *   -DINIT_FAILS   rsmi_init returns RSMI_STATUS_INIT_ERROR
 *   -DGPU1_FAILS   every per-device call for device 1 (and every link query touching it)
 *                  returns RSMI_STATUS_FILE_ERROR
 *   -DNO_POWER     rsmi_dev_power_ave_get is not exported (a missing optional symbol)
 *   -DNO_MEMORY_TOTAL  rsmi_dev_memory_total_get is not exported (a missing required symbol)
 *   -DROCM5        the ROCm 5 library: version 5.0.0, rsmi_frequencies_t without
 *                  has_deep_sleep and with 32 entries, no rsmi_dev_market_name_get
 */
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

typedef uint32_t rsmi_status_t;

#define RSMI_STATUS_SUCCESS 0
#define RSMI_STATUS_INVALID_ARGS 1
#define RSMI_STATUS_NOT_SUPPORTED 2
#define RSMI_STATUS_FILE_ERROR 3
#define RSMI_STATUS_INIT_ERROR 8
#define RSMI_STATUS_INSUFFICIENT_SIZE 11

#define RSMI_MEM_TYPE_VRAM 0
#define RSMI_TEMP_TYPE_EDGE 0
#define RSMI_TEMP_TYPE_JUNCTION 1
#define RSMI_TEMP_CURRENT 0
#define RSMI_CLK_TYPE_SYS 0
#define RSMI_CLK_TYPE_MEM 4
#define RSMI_SW_COMP_DRIVER 0
#define RSMI_IOLINK_TYPE_XGMI 2

#define RSMI_GPU_BLOCK_UMC 0x1ULL
#define RSMI_GPU_BLOCK_SDMA 0x2ULL
#define RSMI_GPU_BLOCK_GFX 0x4ULL
#define RSMI_GPU_BLOCK_MMHUB 0x8ULL
#define RSMI_GPU_BLOCK_XGMI_WAFL 0x80ULL

typedef struct {
    uint32_t major, minor, patch;
    const char *build;
} rsmi_version_t;

#ifdef ROCM5
#define MAX_FREQ 32
typedef struct {
    uint32_t num_supported;
    uint32_t current;
    uint64_t frequency[MAX_FREQ];
} rsmi_frequencies_t;
#else
#define MAX_FREQ 33
typedef struct {
    bool has_deep_sleep;
    uint32_t num_supported;
    uint32_t current;
    uint64_t frequency[MAX_FREQ];
} rsmi_frequencies_t;
#endif

typedef struct {
    uint64_t correctable_err;
    uint64_t uncorrectable_err;
} rsmi_error_count_t;

static int initialised = 0;

/* Per-device facts. */
/* BDFID = domain << 32 | bus << 8 | device << 3 | function: 0000:c1:00.0 and a made-up
 * 0001:0d:1e.3 that exercises every field. */
static const uint64_t bdfids[] = {0xc100ULL, (1ULL << 32) | (0x0dULL << 8) | (0x1eULL << 3) | 3};
static const uint64_t unique_ids[] = {0x1a2b3c4d5e6f7081ULL, 0x0000000000c0ffeeULL};
static const uint64_t used[] = {5ULL << 30, 0};
static const uint32_t busy[] = {71, 3};
static const int64_t junction_mc[] = {48000, 39000};
static const uint32_t numa[] = {0, 1};

/* Rejects unknown devices, and device 1 entirely with -DGPU1_FAILS. */
static rsmi_status_t check(uint32_t dv) {
    if (!initialised) return RSMI_STATUS_INIT_ERROR;
    if (dv > 1) return RSMI_STATUS_INVALID_ARGS;
#ifdef GPU1_FAILS
    if (dv == 1) return RSMI_STATUS_FILE_ERROR;
#endif
    return RSMI_STATUS_SUCCESS;
}

static rsmi_status_t copy(char *out, size_t len, const char *text) {
    if (out == NULL || len == 0) return RSMI_STATUS_INVALID_ARGS;
    if (strlen(text) + 1 > len) {
        memcpy(out, text, len); /* as the real library: only len bytes, no terminator */
        return RSMI_STATUS_INSUFFICIENT_SIZE;
    }
    strcpy(out, text);
    return RSMI_STATUS_SUCCESS;
}

#define CHECK(dv)                                   \
    do {                                            \
        rsmi_status_t s_ = check(dv);               \
        if (s_ != RSMI_STATUS_SUCCESS) return s_;   \
    } while (0)

rsmi_status_t rsmi_init(uint64_t flags) {
    (void)flags;
#ifdef INIT_FAILS
    return RSMI_STATUS_INIT_ERROR;
#else
    initialised = 1;
    return RSMI_STATUS_SUCCESS;
#endif
}

rsmi_status_t rsmi_shut_down(void) {
    initialised = 0;
    return RSMI_STATUS_SUCCESS;
}

rsmi_status_t rsmi_num_monitor_devices(uint32_t *n) {
    if (!initialised) return RSMI_STATUS_INIT_ERROR;
    *n = 2;
    return RSMI_STATUS_SUCCESS;
}

rsmi_status_t rsmi_version_get(rsmi_version_t *v) {
#ifdef ROCM5
    v->major = 5; v->minor = 0; v->patch = 0;
#else
    v->major = 7; v->minor = 3; v->patch = 0;
#endif
    v->build = "stub";
    return RSMI_STATUS_SUCCESS;
}

rsmi_status_t rsmi_version_str_get(uint32_t component, char *out, uint32_t len) {
    if (component != RSMI_SW_COMP_DRIVER) return RSMI_STATUS_INVALID_ARGS;
    return copy(out, len, "6.8.5");
}

/* What rsmi_dev_name_get returns from pci.ids for 0x74a1. */
rsmi_status_t rsmi_dev_name_get(uint32_t dv, char *out, size_t len) {
    CHECK(dv);
    return copy(out, len, "Aqua Vanjaram [Instinct MI300X]");
}

#ifndef ROCM5
rsmi_status_t rsmi_dev_market_name_get(uint32_t dv, char *out, uint32_t len) {
    CHECK(dv);
    return copy(out, len, "AMD Instinct MI300X");
}
#endif

rsmi_status_t rsmi_dev_unique_id_get(uint32_t dv, uint64_t *id) {
    CHECK(dv);
    *id = unique_ids[dv];
    return RSMI_STATUS_SUCCESS;
}

rsmi_status_t rsmi_dev_serial_number_get(uint32_t dv, char *out, uint32_t len) {
    CHECK(dv);
    return copy(out, len, dv == 0 ? "692312000001" : "692312000002");
}

#ifndef NO_MEMORY_TOTAL
rsmi_status_t rsmi_dev_memory_total_get(uint32_t dv, uint32_t type, uint64_t *total) {
    CHECK(dv);
    if (type != RSMI_MEM_TYPE_VRAM) return RSMI_STATUS_NOT_SUPPORTED;
    *total = 192ULL << 30;
    return RSMI_STATUS_SUCCESS;
}
#endif

rsmi_status_t rsmi_dev_memory_usage_get(uint32_t dv, uint32_t type, uint64_t *u) {
    CHECK(dv);
    if (type != RSMI_MEM_TYPE_VRAM) return RSMI_STATUS_NOT_SUPPORTED;
    *u = used[dv];
    return RSMI_STATUS_SUCCESS;
}

rsmi_status_t rsmi_dev_busy_percent_get(uint32_t dv, uint32_t *p) {
    CHECK(dv);
    *p = busy[dv];
    return RSMI_STATUS_SUCCESS;
}

/* Like an MI300X: no edge sensor, only junction (hotspot). */
rsmi_status_t rsmi_dev_temp_metric_get(uint32_t dv, uint32_t sensor, uint32_t metric, int64_t *t) {
    CHECK(dv);
    if (metric != RSMI_TEMP_CURRENT || sensor != RSMI_TEMP_TYPE_JUNCTION) return RSMI_STATUS_NOT_SUPPORTED;
    *t = junction_mc[dv];
    return RSMI_STATUS_SUCCESS;
}

#ifndef NO_POWER
static const uint64_t power_uw[] = {350000000ULL, 142000000ULL};
rsmi_status_t rsmi_dev_power_ave_get(uint32_t dv, uint32_t sensor, uint64_t *p) {
    CHECK(dv);
    if (sensor != 0) return RSMI_STATUS_INVALID_ARGS;
    *p = power_uw[dv];
    return RSMI_STATUS_SUCCESS;
}
#endif

rsmi_status_t rsmi_dev_power_cap_get(uint32_t dv, uint32_t sensor, uint64_t *cap) {
    CHECK(dv);
    if (sensor != 0) return RSMI_STATUS_INVALID_ARGS;
    *cap = 750000000ULL;
    return RSMI_STATUS_SUCCESS;
}

rsmi_status_t rsmi_dev_pci_id_get(uint32_t dv, uint64_t *bdfid) {
    CHECK(dv);
    *bdfid = bdfids[dv];
    return RSMI_STATUS_SUCCESS;
}

rsmi_status_t rsmi_topo_get_numa_node_number(uint32_t dv, uint32_t *node) {
    CHECK(dv);
    *node = numa[dv];
    return RSMI_STATUS_SUCCESS;
}

/* SYS: 500, 1300, 2100 MHz, running at 1300. MEM: 900, 1300 MHz, running at 1300. */
rsmi_status_t rsmi_dev_gpu_clk_freq_get(uint32_t dv, uint32_t type, rsmi_frequencies_t *f) {
    CHECK(dv);
    memset(f, 0, sizeof(*f));
#ifndef ROCM5
    f->has_deep_sleep = true;
#endif
    if (type == RSMI_CLK_TYPE_SYS) {
        f->num_supported = 3;
        f->frequency[0] = 500000000ULL;
        f->frequency[1] = 1300000000ULL;
        f->frequency[2] = 2100000000ULL;
        f->current = 1;
    } else if (type == RSMI_CLK_TYPE_MEM) {
        f->num_supported = 2;
        f->frequency[0] = 900000000ULL;
        f->frequency[1] = 1300000000ULL;
        f->current = 1;
    } else {
        return RSMI_STATUS_NOT_SUPPORTED;
    }
    return RSMI_STATUS_SUCCESS;
}

rsmi_status_t rsmi_dev_ecc_enabled_get(uint32_t dv, uint64_t *blocks) {
    CHECK(dv);
    *blocks = RSMI_GPU_BLOCK_UMC | RSMI_GPU_BLOCK_SDMA | RSMI_GPU_BLOCK_GFX | RSMI_GPU_BLOCK_MMHUB;
    return RSMI_STATUS_SUCCESS;
}

/* Device 0: UMC 5 corrected + 1 uncorrected, GFX 2 corrected; MMHUB counting is not
 * supported by the kernel; XGMI_WAFL has counts but ECC is not enabled there, so they must
 * not be summed. Device 1: no errors. */
rsmi_status_t rsmi_dev_ecc_count_get(uint32_t dv, uint64_t block, rsmi_error_count_t *ec) {
    CHECK(dv);
    ec->correctable_err = 0;
    ec->uncorrectable_err = 0;
    if (block == RSMI_GPU_BLOCK_MMHUB) return RSMI_STATUS_NOT_SUPPORTED;
    if (dv == 1) return RSMI_STATUS_SUCCESS;
    if (block == RSMI_GPU_BLOCK_UMC) {
        ec->correctable_err = 5;
        ec->uncorrectable_err = 1;
    } else if (block == RSMI_GPU_BLOCK_GFX) {
        ec->correctable_err = 2;
    } else if (block == RSMI_GPU_BLOCK_XGMI_WAFL) {
        ec->correctable_err = 1000;
        ec->uncorrectable_err = 1000;
    }
    return RSMI_STATUS_SUCCESS;
}

rsmi_status_t rsmi_topo_get_link_type(uint32_t src, uint32_t dst, uint64_t *hops, uint32_t *type) {
    CHECK(src);
    CHECK(dst);
    if (src == dst) return RSMI_STATUS_INVALID_ARGS;
    *hops = 1;
    *type = RSMI_IOLINK_TYPE_XGMI;
    return RSMI_STATUS_SUCCESS;
}
