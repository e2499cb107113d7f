/* Test support: a stub libnvidia-ml exporting the NVML symbols the agent uses, so the
 * real nvml-wrapper code path runs without a GPU. It is not NVML: it answers only what the
 * tests ask, with the struct layouts of nvml-wrapper-sys 0.10 (bindings.rs).
 *
 * Simulated GPUs:
 *   0  NVIDIA H100 80GB HBM3   00000000:17:00.0  NUMA 0  sm_90  ECC on, some errors and
 *                              remapped rows, throttled by sw_power_cap
 *   1  NVIDIA A100-SXM4-40GB   00000000:2A:00.0  NUMA 1  sm_80  ECC on, clean
 *   2  NVIDIA L4 (-DTHREE_GPUS) 00000000:E3:00.0 NUMA 1  sm_89  ECC off, no NVLink
 * GPUs 0 and 1 are joined by 4 NVLinks (links 0-3 of each reach the other's bus id).
 * PCIe common ancestors: 0-1 host bridge, 0-2 NUMA node, 1-2 system.
 *
 * Compile-time switches:
 *   -DINIT_FAILS          nvmlInit_v2 returns NVML_ERROR_DRIVER_NOT_LOADED
 *   -DGPU1_LOST           the second device's handle returns NVML_ERROR_GPU_IS_LOST
 *   -DNO_TEMPERATURE      nvmlDeviceGetTemperature is not exported (a missing symbol)
 *   -DTHREE_GPUS          adds GPU 2, reachable from the others over PCIe only
 *   -DMIG                 GPU 0 is in MIG mode with two MIG devices (1g.10gb, 3g.40gb)
 *   -DNVSWITCH            GPUs 0 and 1 reach each other through NVSwitches: their 4 active
 *                         links end at switch bus ids, not at the other GPU
 *   -DNO_NVLINK           the NVLink queries return NVML_ERROR_NOT_SUPPORTED
 *   -DNO_NUMA             nvmlDeviceGetNumaNodeId returns NVML_ERROR_NOT_SUPPORTED
 *   -DNO_XID_EVENTS       the event API returns NVML_ERROR_NOT_SUPPORTED
 *   -DGPU1_XID_REGISTER_FAILS  GPU 1 claims XID events but registering it fails
 *   -DGPU_COUNT=N         replaces the GPUs above with N (1 to 16) identical, clean H100s, as on
 *                         an HGX board: GPU i is NVIDIA H100 80GB HBM3 at 00000000:XX:00.0 with
 *                         XX = 0x10 + 8 * i, NUMA node i % 2, UUID ending in i (two hex
 *                         digits), ECC on with no errors and no remapped rows, not throttled,
 *                         MIG supported but off; all 18 NVLinks of each GPU are active and end
 *                         at NVSwitches (as with -DNVSWITCH). Not with -DTHREE_GPUS or -DMIG.
 *   -DEVENT_POLL_MS=N     with no event pending, nvmlEventSetWait_v2 sleeps at most N ms
 *                         (default 20) before returning NVML_ERROR_TIMEOUT; 0 sleeps the whole
 *                         timeout, as the driver's blocking wait does when no event comes
 *
 * Run-time control files, next to the compiled library (found with dladdr), so tests that
 * each compile their own copy never share state:
 *   <library>.events  lines "INDEX XID"; nvmlEventSetWait_v2 delivers each new complete line
 *                     for a registered device as a critical XID event, in order, or sleeps
 *                     min(timeout, EVENT_POLL_MS) and returns NVML_ERROR_TIMEOUT (a line
 *                     written during that sleep is delivered by the next call).
 *   <library>.lost    a device index: from now on every call on that device returns
 *                     NVML_ERROR_GPU_IS_LOST (as a GPU that fell off the bus does).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
/* nvmlPciInfo_t (v3): busIdLegacy[16], domain, bus, device, pciDeviceId, pciSubSystemId, busId[32]. */
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;
typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType, eventData;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;
typedef struct event_set *nvmlEventSet_t;

#define OK 0
#define INVALID 2
#define NOT_SUPPORTED 3
#define NOT_FOUND 6
#define NOT_LOADED 9
#define TIMEOUT 10
#define GPU_LOST 15

#define EVENT_XID_CRITICAL 8ULL
#define EVENT_SINGLE_BIT_ECC 1ULL
#define EVENT_DOUBLE_BIT_ECC 2ULL
#define EVENT_PSTATE 4ULL
#define EVENT_CLOCK 16ULL

#define THROTTLE_SW_POWER_CAP 4ULL

#define CLOCK_GRAPHICS 0
#define CLOCK_SM 1
#define CLOCK_MEM 2

#define TOPOLOGY_HOSTBRIDGE 30
#define TOPOLOGY_NODE 40
#define TOPOLOGY_SYSTEM 50

/* MODEL(i): the row of the per-model tables below that describes GPU i. */
#ifdef GPU_COUNT
#if GPU_COUNT < 1 || GPU_COUNT > 16
#error "GPU_COUNT must be 1 to 16"
#endif
#if defined(THREE_GPUS) || defined(MIG)
#error "GPU_COUNT cannot be combined with THREE_GPUS or MIG"
#endif
#define GPUS GPU_COUNT
#define MODEL(i) 0
#ifndef NVSWITCH
#define NVSWITCH
#endif
#define ACTIVE_NVLINKS 18 /* every link, each to an NVSwitch */
#else
#ifdef THREE_GPUS
#define GPUS 3
#else
#define GPUS 2
#endif
#define MODEL(i) (i)
#define ACTIVE_NVLINKS 4 /* links 0-3, to the peer GPU or to NVSwitches */
#endif
#ifndef EVENT_POLL_MS
#define EVENT_POLL_MS 20
#endif

static int initialised = 0;
static const char *names[] = {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "NVIDIA L4"};
static const unsigned long long totals[] = {81559ULL << 20, 40536ULL << 20, 23034ULL << 20};
static const int capability[][2] = {{9, 0}, {8, 0}, {8, 9}};
static const unsigned int max_sm[] = {1980, 1410, 2040}, max_mem[] = {2619, 1215, 6251};
static const unsigned int sm_now[] = {1755, 1410, 2040}, mem_now[] = {2619, 1215, 6251};
static const unsigned int nvlink_count[] = {18, 12, 0};
static const int ecc_on[] = {1, 1, 0};
#ifdef GPU_COUNT
/* Every GPU is clean: no ECC errors, no remapped rows, not throttled. */
static const unsigned long long ecc_counts[GPUS][2][2];
static const unsigned int remapped[GPUS][4];
static const unsigned long long throttle[GPUS];
#else
/* [gpu][corrected, uncorrected][volatile, aggregate] */
static const unsigned long long ecc_counts[][2][2] = {{{3, 12}, {0, 1}}, {{0, 0}, {0, 0}}, {{0, 0}, {0, 0}}};
/* corrected rows, uncorrected rows, pending, failure */
static const unsigned int remapped[][4] = {{2, 1, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}};
static const unsigned long long throttle[] = {THROTTLE_SW_POWER_CAP, 0, 0};
#endif

/* MIG devices of GPU 0 (with -DMIG). Handles are 0x100 + slot. */
#define MIG_BASE 0x100
#define MIG_SLOTS 7
static const char *mig_profiles[] = {"1g.10gb", "3g.40gb"};
static const char *mig_uuids[] = {"MIG-aaaaaaaa-1111-2222-3333-444444444444", "MIG-bbbbbbbb-5555-6666-7777-888888888888"};
static const unsigned long long mig_memory[] = {9856ULL << 20, 40192ULL << 20};
static const unsigned int mig_gpu_instance[] = {9, 2}, mig_compute_instance[] = {0, 0};
#define MIG_DEVICES 2

static int idx(nvmlDevice_t d) { return (int)((unsigned long)d) - 1; }
#ifdef GPU_COUNT
static unsigned int pci_bus(int i) { return 0x10 + 8 * (unsigned int)i; }
static unsigned int numa_node(int i) { return (unsigned int)i % 2; }
static const char *uuid(int i, char *out, size_t len) {
    snprintf(out, len, "GPU-8a100000-0000-4000-8000-0000000000%02x", (unsigned int)i);
    return out;
}
#else
static const char *uuids[] = {"GPU-11111111-2222-3333-4444-555555555555", "GPU-66666666-7777-8888-9999-000000000000",
                              "GPU-abcdefab-cdef-abcd-efab-cdefabcdefab"};
static const unsigned int pci_buses[] = {0x17, 0x2a, 0xe3};
static const unsigned int numa_nodes[] = {0, 1, 1};
static unsigned int pci_bus(int i) { return pci_buses[i]; }
static unsigned int numa_node(int i) { return numa_nodes[i]; }
static const char *uuid(int i, char *out, size_t len) { (void)out, (void)len; return uuids[i]; }
#endif
static int is_gpu(nvmlDevice_t d) { return idx(d) >= 0 && idx(d) < GPUS; }
static int mig_slot(nvmlDevice_t d) {
    long v = (long)(unsigned long)d - MIG_BASE;
#ifdef MIG
    if (v >= 0 && v < MIG_DEVICES) return (int)v;
#endif
    (void)v;
    return -1;
}
static int copy(char *out, unsigned int len, const char *text) {
    if (strlen(text) + 1 > len) return INVALID;
    strcpy(out, text);
    return OK;
}

/* The path of this library, for the control files next to it. */
static const char *control_file(const char *suffix, char *out, size_t len) {
    Dl_info info;
    if (!dladdr((void *)&control_file, &info) || !info.dli_fname) return NULL;
    if ((size_t)snprintf(out, len, "%s.%s", info.dli_fname, suffix) >= len) return NULL;
    return out;
}
static int lost_index(void) {
    char path[PATH_MAX];
    if (!control_file("lost", path, sizeof path)) return -1;
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int index = -1;
    if (fscanf(f, "%d", &index) != 1) index = -1;
    fclose(f);
    return index;
}
/* Every per-device call starts here: unknown handles are invalid, a lost GPU is lost. */
#define DEVICE(d)                                               \
    do {                                                        \
        if (!initialised) return 1;                             \
        if (!is_gpu(d) && mig_slot(d) < 0) return INVALID;      \
        if (is_gpu(d) && idx(d) == lost_index()) return GPU_LOST; \
    } while (0)
#define GPU_ONLY(d)                          \
    do {                                     \
        DEVICE(d);                           \
        if (!is_gpu(d)) return NOT_SUPPORTED; \
    } while (0)

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
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) { *count = GPUS; return initialised ? OK : 1; }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    if (i >= GPUS) return INVALID;
#ifdef GPU1_LOST
    if (i == 1) return GPU_LOST;
#endif
    *d = (nvmlDevice_t)(unsigned long)(i + 1);
    return OK;
}
nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *i) { GPU_ONLY(d); *i = (unsigned int)idx(d); return OK; }
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *out, unsigned int len) {
    DEVICE(d);
    if (mig_slot(d) >= 0) {
        char name[96];
        snprintf(name, sizeof name, "%s MIG %s", names[0], mig_profiles[mig_slot(d)]);
        return copy(out, len, name);
    }
    return copy(out, len, names[MODEL(idx(d))]);
}
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *out, unsigned int len) {
    char buf[64];
    DEVICE(d);
    return copy(out, len, mig_slot(d) >= 0 ? mig_uuids[mig_slot(d)] : uuid(idx(d), buf, sizeof buf));
}
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    DEVICE(d);
    m->total = mig_slot(d) >= 0 ? mig_memory[mig_slot(d)] : totals[MODEL(idx(d))];
    m->used = 1ULL << 30;
    m->reserved = 0;
    m->free = m->total - m->used;
    return OK;
}
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    GPU_ONLY(d);
    u->gpu = 37 + idx(d);
    u->memory = 5;
    return OK;
}
#ifndef NO_TEMPERATURE
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *t) {
    (void)sensor;
    GPU_ONLY(d);
    *t = 41 + idx(d);
    return OK;
}
#endif
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw) {
    GPU_ONLY(d);
    *mw = 123000 + 1000 * idx(d);
    return OK;
}
nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t d, unsigned int *mw) {
    GPU_ONLY(d);
    *mw = MODEL(idx(d)) ? 400000 : 700000;
    return OK;
}

/* PCI and NUMA. NVML writes bus ids with an 8-digit domain and upper-case hex. */
static void fill_pci(nvmlPciInfo_t *p, unsigned int bus) {
    memset(p, 0, sizeof *p);
    p->domain = 0;
    p->bus = bus;
    p->device = 0;
    p->pciDeviceId = 0x233010de;
    p->pciSubSystemId = 0x16c110de;
    snprintf(p->busIdLegacy, sizeof p->busIdLegacy, "0000:%02X:00.0", bus);
    snprintf(p->busId, sizeof p->busId, "00000000:%02X:00.0", bus);
}
nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *p) {
    GPU_ONLY(d);
    fill_pci(p, pci_bus(idx(d)));
    return OK;
}
nvmlReturn_t nvmlDeviceGetNumaNodeId(nvmlDevice_t d, unsigned int *node) {
    GPU_ONLY(d);
#ifdef NO_NUMA
    (void)node, (void)numa_node;
    return NOT_SUPPORTED;
#else
    *node = numa_node(idx(d));
    return OK;
#endif
}

/* Versions and clocks. */
nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    GPU_ONLY(d);
    *major = capability[MODEL(idx(d))][0];
    *minor = capability[MODEL(idx(d))][1];
    return OK;
}
static nvmlReturn_t clock_mhz(nvmlDevice_t d, int type, unsigned int *mhz, const unsigned int *sm, const unsigned int *mem) {
    GPU_ONLY(d);
    switch (type) {
    case CLOCK_GRAPHICS:
    case CLOCK_SM: *mhz = sm[MODEL(idx(d))]; return OK;
    case CLOCK_MEM: *mhz = mem[MODEL(idx(d))]; return OK;
    default: return NOT_SUPPORTED;
    }
}
nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t d, int type, unsigned int *mhz) {
    return clock_mhz(d, type, mhz, max_sm, max_mem);
}
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned int *mhz) {
    return clock_mhz(d, type, mhz, sm_now, mem_now);
}
nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t d, unsigned long long *reasons) {
    GPU_ONLY(d);
    *reasons = throttle[idx(d)];
    return OK;
}
nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t d, unsigned long long *reasons) {
    return nvmlDeviceGetCurrentClocksThrottleReasons(d, reasons);
}

/* ECC, page retirement (pre-Ampere only: not supported here) and row remapping. */
nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t d, int *current, int *pending) {
    GPU_ONLY(d);
    *current = *pending = ecc_on[MODEL(idx(d))];
    return OK;
}
nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t d, int error_type, int counter_type, unsigned long long *count) {
    GPU_ONLY(d);
    if (!ecc_on[MODEL(idx(d))]) return NOT_SUPPORTED;
    if (error_type < 0 || error_type > 1 || counter_type < 0 || counter_type > 1) return INVALID;
    *count = ecc_counts[idx(d)][error_type][counter_type];
    return OK;
}
nvmlReturn_t nvmlDeviceGetRetiredPages(nvmlDevice_t d, int cause, unsigned int *count, unsigned long long *addresses) {
    (void)cause, (void)count, (void)addresses;
    GPU_ONLY(d);
    return NOT_SUPPORTED;
}
nvmlReturn_t nvmlDeviceGetRetiredPages_v2(nvmlDevice_t d, int cause, unsigned int *count, unsigned long long *addresses,
                                          unsigned long long *timestamps) {
    (void)timestamps;
    return nvmlDeviceGetRetiredPages(d, cause, count, addresses);
}
nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t d, int *pending) {
    (void)pending;
    GPU_ONLY(d);
    return NOT_SUPPORTED;
}
nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t d, unsigned int *corrected, unsigned int *uncorrected,
                                       unsigned int *pending, unsigned int *failed) {
    GPU_ONLY(d);
    if (!ecc_on[MODEL(idx(d))]) return NOT_SUPPORTED;
    *corrected = remapped[idx(d)][0];
    *uncorrected = remapped[idx(d)][1];
    *pending = remapped[idx(d)][2];
    *failed = remapped[idx(d)][3];
    return OK;
}

/* MIG. */
nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int *current, unsigned int *pending) {
    GPU_ONLY(d);
    if (MODEL(idx(d)) == 2) return NOT_SUPPORTED; /* the L4 has no MIG */
#ifdef MIG
    *current = *pending = idx(d) == 0;
#else
    *current = *pending = 0;
#endif
    return OK;
}
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t d, unsigned int *count) {
    GPU_ONLY(d);
    *count = MODEL(idx(d)) == 2 ? 0 : MIG_SLOTS;
    return OK;
}
nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned int slot, nvmlDevice_t *mig) {
    GPU_ONLY(d);
#ifdef MIG
    if (idx(d) == 0 && slot < MIG_DEVICES) {
        *mig = (nvmlDevice_t)(unsigned long)(MIG_BASE + slot);
        return OK;
    }
#else
    (void)mig;
#endif
    return slot < MIG_SLOTS ? NOT_FOUND : INVALID;
}
nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t d, unsigned int *is_mig) {
    DEVICE(d);
    *is_mig = mig_slot(d) >= 0;
    return OK;
}
nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t d, unsigned int *id) {
    DEVICE(d);
    if (mig_slot(d) < 0) return NOT_SUPPORTED;
    *id = mig_gpu_instance[mig_slot(d)];
    return OK;
}
nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t d, unsigned int *id) {
    DEVICE(d);
    if (mig_slot(d) < 0) return NOT_SUPPORTED;
    *id = mig_compute_instance[mig_slot(d)];
    return OK;
}

/* NVLink and PCIe topology. */
nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t d, unsigned int link, int *active) {
    GPU_ONLY(d);
#ifdef NO_NVLINK
    (void)link, (void)active, (void)nvlink_count;
    return NOT_SUPPORTED;
#else
    if (nvlink_count[MODEL(idx(d))] == 0) return NOT_SUPPORTED;
    if (link >= nvlink_count[MODEL(idx(d))]) return INVALID;
    *active = link < ACTIVE_NVLINKS;
    return OK;
#endif
}
nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t d, unsigned int link, nvmlPciInfo_t *p) {
    int active = 0;
    nvmlReturn_t r = nvmlDeviceGetNvLinkState(d, link, &active);
    if (r != OK) return r;
    if (!active) return NOT_SUPPORTED;
#ifdef NVSWITCH
    fill_pci(p, 0xc5 + link); /* one NVSwitch per link */
#else
    fill_pci(p, pci_bus(1 - idx(d)));
#endif
    return OK;
}
nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t a, nvmlDevice_t b, int *level) {
    GPU_ONLY(a);
    GPU_ONLY(b);
    if (idx(a) == idx(b)) return INVALID;
#ifdef GPU_COUNT
    *level = numa_node(idx(a)) == numa_node(idx(b)) ? TOPOLOGY_NODE : TOPOLOGY_SYSTEM;
#else
    int pair = idx(a) + idx(b); /* 1: 0-1, 2: 0-2, 3: 1-2 */
    *level = pair == 1 ? TOPOLOGY_HOSTBRIDGE : pair == 2 ? TOPOLOGY_NODE : TOPOLOGY_SYSTEM;
#endif
    return OK;
}

/* Events: a set remembers which devices registered and how far it read the events file. */
struct event_set {
    unsigned int devices; /* bit per GPU index */
    long offset;
};
nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t d, unsigned long long *types) {
    GPU_ONLY(d);
#ifdef NO_XID_EVENTS
    (void)types;
    return NOT_SUPPORTED;
#else
    *types = EVENT_SINGLE_BIT_ECC | EVENT_DOUBLE_BIT_ECC | EVENT_PSTATE | EVENT_XID_CRITICAL | EVENT_CLOCK;
    return OK;
#endif
}
nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
#ifdef NO_XID_EVENTS
    (void)set;
    return NOT_SUPPORTED;
#else
    if (!initialised) return 1;
    *set = calloc(1, sizeof **set);
    return *set ? OK : 999;
#endif
}
nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    free(set);
    return OK;
}
nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t d, unsigned long long types, nvmlEventSet_t set) {
    GPU_ONLY(d);
#ifdef NO_XID_EVENTS
    (void)types, (void)set;
    return NOT_SUPPORTED;
#else
#ifdef GPU1_XID_REGISTER_FAILS
    if (idx(d) == 1) return NOT_SUPPORTED;
#endif
    if (!set || !(types & EVENT_XID_CRITICAL)) return INVALID;
    set->devices |= 1u << idx(d);
    return OK;
#endif
}
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms) {
#ifdef NO_XID_EVENTS
    (void)set, (void)data, (void)timeout_ms;
    return NOT_SUPPORTED;
#else
    char path[PATH_MAX], line[128];
    if (!initialised) return 1;
    if (!set || !data) return INVALID;
    FILE *f = control_file("events", path, sizeof path) ? fopen(path, "r") : NULL;
    if (f && fseek(f, set->offset, SEEK_SET) == 0) {
        while (fgets(line, sizeof line, f)) {
            size_t n = strlen(line);
            if (n == 0 || line[n - 1] != '\n') break; /* a line still being written */
            set->offset += (long)n;
            int index;
            unsigned long long xid;
            if (sscanf(line, "%d %llu", &index, &xid) != 2) continue;
            /* Events of a lost GPU still arrive (XID 79 is how a GPU falling off the bus shows). */
            if (index < 0 || index >= GPUS || !(set->devices & (1u << index))) continue;
            memset(data, 0, sizeof *data);
            data->device = (nvmlDevice_t)(unsigned long)(index + 1);
            data->eventType = EVENT_XID_CRITICAL;
            data->eventData = xid;
            fclose(f);
            return OK;
        }
    }
    if (f) fclose(f);
    unsigned int ms = EVENT_POLL_MS && timeout_ms > EVENT_POLL_MS ? EVENT_POLL_MS : timeout_ms;
    struct timespec pause = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
    return TIMEOUT;
#endif
}
