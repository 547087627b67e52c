/* seccomp_probe: what the interceptor's seccomp filter costs on the library's own system calls
 * (a trapped number, here write(2), made from outside libc's text, so allowed after the
 * instruction-pointer test; not cacheable by the kernel's action cache).
 *
 *   cc -O2 -o seccomp_probe tests/intercept/seccomp_probe.c
 *   ./seccomp_probe VARIANT      (one process per variant: a filter cannot be removed)
 *
 * VARIANT: none | cached (allow-all: every number cached) | floor (4 instructions, loads the
 * instruction pointer for write) | old (the filter of intercept::filter before session 2 branch
 * icept2: arch, number, 3 refused, 23 trapped, libc-text test) | gate (icept2: trapped numbers
 * first, the gate's return address tested before the libc-text test).
 * The "libc text" is placed 3 MiB below the gate, in the same 4 GiB window, as it is for a
 * preloaded library mapped above libc (the longest path through the libc-text test).
 * Prints the median over 9 loops of the calling thread's CPU time per raw write(/dev/null, 1). */
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/audit.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

extern char probe_gate_ret[];
__asm__(".text\n.globl probe_gate\nprobe_gate:\n mov %rdi,%rax\n mov %rsi,%rdi\n mov %rdx,%rsi\n"
        " mov %rcx,%rdx\n syscall\n.globl probe_gate_ret\nprobe_gate_ret:\n ret\n");
long probe_gate(long nr, long a, long b, long c);

#define LD(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))
#define JEQ(k, t, f) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (k), (t), (f))
#define JGE(k, t, f) BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, (k), (t), (f))
#define RET(k) BPF_STMT(BPF_RET | BPF_K, (k))
#define IPLO offsetof(struct seccomp_data, instruction_pointer)
#define IPHI (IPLO + 4)

static const int trapped[] = {0, 1, 19, 20, 45, 44, 47, 46, 318, 7, 271, 23, 270, 232, 281, 43, 288, 42, 61, 3, 228, 96, 201};
static const int refused[] = {425, 426, 427};
#define NT (int)(sizeof trapped / sizeof *trapped)

static int build(const char *v, struct sock_filter *f) {
    uint64_t gate = (uint64_t)probe_gate_ret, lo = gate - (3 << 20), hi = gate - (1 << 20);
    int n = 0;
    if (!strcmp(v, "cached")) { f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW); return n; }
    if (!strcmp(v, "floor")) {
        f[n++] = (struct sock_filter)LD(offsetof(struct seccomp_data, nr));
        f[n++] = (struct sock_filter)JEQ(SYS_write, 0, 1);
        f[n++] = (struct sock_filter)LD(IPLO);
        f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
        return n;
    }
    int old = !strcmp(v, "old");
    f[n++] = (struct sock_filter)LD(offsetof(struct seccomp_data, arch));
    f[n++] = (struct sock_filter)JEQ(AUDIT_ARCH_X86_64, 1, 0);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
    f[n++] = (struct sock_filter)LD(offsetof(struct seccomp_data, nr));
    if (old) for (int i = 0; i < 3; i++) {
        f[n++] = (struct sock_filter)JEQ(refused[i], 0, 1);
        f[n++] = (struct sock_filter)RET(SECCOMP_RET_TRAP);
    }
    for (int i = 0; i < NT; i++) f[n++] = (struct sock_filter)JEQ(trapped[i], (old ? NT - i : NT - i + 6), 0);
    if (!old) for (int i = 0; i < 3; i++) {
        f[n++] = (struct sock_filter)JEQ(refused[i], 0, 1);
        f[n++] = (struct sock_filter)RET(SECCOMP_RET_TRAP);
    }
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
    if (!old) { /* the gate's return address: allow at once */
        f[n++] = (struct sock_filter)LD(IPLO);
        f[n++] = (struct sock_filter)JEQ((uint32_t)gate, 0, 3);
        f[n++] = (struct sock_filter)LD(IPHI);
        f[n++] = (struct sock_filter)JEQ((uint32_t)(gate >> 32), 0, 1);
        f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
    }
    f[n++] = (struct sock_filter)LD(IPHI);
    f[n++] = (struct sock_filter)JEQ((uint32_t)(lo >> 32), 1, 0);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
    f[n++] = (struct sock_filter)LD(IPLO);
    f[n++] = (struct sock_filter)JGE((uint32_t)lo, 1, 0);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
    f[n++] = (struct sock_filter)JGE((uint32_t)hi, 0, 1);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
    f[n++] = (struct sock_filter)RET(SECCOMP_RET_TRAP);
    return n;
}

static double cpu_ns(void) {
    struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}
static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    const char *v = argc > 1 ? argv[1] : "none";
    struct sock_filter f[64];
    if (strcmp(v, "none")) {
        struct sock_fprog p = {.len = (unsigned short)build(v, f), .filter = f};
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &p)) { perror("seccomp"); return 1; }
    }
    int fd = open("/dev/null", O_WRONLY);
    char c = 'x';
    enum { N = 200000, L = 9 };
    double per[L];
    for (int i = 0; i < 20000; i++) probe_gate(SYS_write, fd, (long)&c, 1);
    for (int l = 0; l < L; l++) {
        double t0 = cpu_ns();
        for (int i = 0; i < N; i++) probe_gate(SYS_write, fd, (long)&c, 1);
        per[l] = (cpu_ns() - t0) / N;
    }
    qsort(per, L, sizeof *per, cmp);
    printf("%-7s write(/dev/null, 1) through a gate outside libc: %6.1f ns (median of %d loops of %d)\n", v, per[L / 2], L, N);
    return 0;
}
