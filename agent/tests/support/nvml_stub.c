/* Test support: a stub libnvidia-ml exporting the NVML symbols the agent uses, so the
 * real nvml-wrapper code path runs without a GPU. Two simulated GPUs (an H100 80GB and an
 * A100 40GB). Compile-time switches make the failure variants:
 *   -DINIT_FAILS          nvmlInit_v2 returns NVML_ERROR_DRIVER_NOT_LOADED
 *   -DGPU1_LOST           the second device returns NVML_ERROR_GPU_IS_LOST
 *   -DNO_TEMPERATURE      nvmlDeviceGetTemperature is not exported (a missing symbol)
 * It is not NVML: it answers only what the tests ask. */
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;

#define OK 0
#define NOT_LOADED 9
#define INVALID 2
#define GPU_LOST 15

static int initialised = 0;
static const char *names[] = {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"};
static const char *uuids[] = {"GPU-11111111-2222-3333-4444-555555555555", "GPU-66666666-7777-8888-9999-000000000000"};
static const unsigned long long totals[] = {81559ULL << 20, 40536ULL << 20};

static int idx(nvmlDevice_t d) { return (int)((unsigned long)d) - 1; }
static int copy(char *out, unsigned int len, const char *text) {
    if (strlen(text) + 1 > len) return INVALID;
    strcpy(out, text);
    return OK;
}

nvmlReturn_t nvmlInit_v2(void) {
#ifdef INIT_FAILS
    return NOT_LOADED;
#else
    initialised = 1;
    return OK;
#endif
}
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return nvmlInit_v2(); }
nvmlReturn_t nvmlShutdown(void) { initialised = 0; return OK; }
const char *nvmlErrorString(nvmlReturn_t r) { (void)r; return "stub error"; }
nvmlReturn_t nvmlSystemGetDriverVersion(char *out, unsigned int len) { return copy(out, len, "550.54.15"); }
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { *v = 12040; return OK; }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) { *count = 2; return initialised ? OK : 1; }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    if (i > 1) return INVALID;
#ifdef GPU1_LOST
    if (i == 1) return GPU_LOST;
#endif
    *d = (nvmlDevice_t)(unsigned long)(i + 1);
    return OK;
}
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *out, unsigned int len) { return copy(out, len, names[idx(d)]); }
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *out, unsigned int len) { return copy(out, len, uuids[idx(d)]); }
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    m->total = totals[idx(d)];
    m->used = 1ULL << 30;
    m->reserved = 0;
    m->free = m->total - m->used;
    return OK;
}
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) { u->gpu = 37 + idx(d); u->memory = 5; return OK; }
#ifndef NO_TEMPERATURE
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *t) { (void)sensor; *t = 41 + idx(d); return OK; }
#endif
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw) { *mw = 123000 + 1000 * idx(d); return OK; }
nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t d, unsigned int *mw) { *mw = idx(d) ? 400000 : 700000; return OK; }
