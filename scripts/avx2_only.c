/* An AVX2-only view of an AVX-512 CPU, for measuring the x86_64 level that
 * Lambda guarantees on a machine that has more.
 *
 * Loaded with LD_PRELOAD (scripts/compare.sh --avx2-only builds and loads
 * it), it turns on the kernel's CPUID faulting for the process
 * (arch_prctl(ARCH_SET_CPUID, 0), flag `cpuid_fault` in /proc/cpuinfo):
 * every `cpuid` instruction then raises SIGSEGV, and the handler below
 * runs the real one with faulting briefly off, clears the AVX-512 feature
 * bits of leaf 7 and returns past the instruction. ONNX Runtime's MLAS and
 * the Rust standard library both choose their kernels from `cpuid`, so
 * both sides of a comparison run their AVX2 code on the same cores. The
 * flag is inherited by threads and children and reset by execve, where
 * the preload runs again. glibc read `cpuid` before this loads: its own
 * string functions are held back by GLIBC_TUNABLES, which compare.sh sets.
 *
 * A program that installs its own SIGSEGV handler (perf does) takes the
 * faults itself and dies: preload this in the measured program only.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

/* Leaf 7, sub-leaf 0: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL (ebx); VBMI,
 * VBMI2, VNNI, BITALG, VPOPCNTDQ (ecx); 4VNNIW, 4FMAPS, VP2INTERSECT,
 * FP16 (edx). Sub-leaf 1: AVX512_BF16 (eax). */
#define EBX7 ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))
#define ECX7 ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
#define EDX7 ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 23))
#define EAX7_1 (1u << 5)

static void on_fault(int sig, siginfo_t *info, void *context) {
    (void)sig;
    (void)info;
    greg_t *r = ((ucontext_t *)context)->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        /* A real fault: the instruction runs again, and kills. */
        signal(SIGSEGV, SIG_DFL);
        return;
    }
    uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
    set_cpuid(1);
    __cpuid_count(leaf, sub, a, b, c, d);
    set_cpuid(0);
    if (leaf == 7 && sub == 0) {
        b &= ~EBX7;
        c &= ~ECX7;
        d &= ~EDX7;
    } else if (leaf == 7 && sub == 1) {
        a &= ~EAX7_1;
    }
    r[REG_RAX] = a;
    r[REG_RBX] = b;
    r[REG_RCX] = c;
    r[REG_RDX] = d;
    r[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx512(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    if (sigaction(SIGSEGV, &sa, NULL) != 0 || set_cpuid(0) != 0) {
        /* Never a silent AVX-512 measurement labelled AVX2. */
        fprintf(stderr, "avx2_only: CPUID faulting is not available here (no cpuid_fault in /proc/cpuinfo)\n");
        _exit(2);
    }
}
