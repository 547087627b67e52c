//! The seccomp filter program of the preloaded library, built here (pure code, testable) and
//! installed by `intercept-preload`. Layout and reasons: docs/interceptor.md, "The seccomp
//! safety net".

/// One classic-BPF instruction, laid out like the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// `BPF_LD | BPF_W | BPF_ABS`: load a 32-bit word of `struct seccomp_data`.
pub const LD_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`
pub const JEQ: u16 = 0x15;
/// `BPF_JMP | BPF_JGE | BPF_K`
pub const JGE: u16 = 0x35;
/// `BPF_RET | BPF_K`
pub const RET: u16 = 0x06;
pub const RET_ALLOW: u32 = 0x7fff_0000;
pub const RET_TRAP: u32 = 0x0003_0000;
/// `AUDIT_ARCH_X86_64`
pub const ARCH_X86_64: u32 = 0xC000_003E;
/// Offsets in `struct seccomp_data`.
pub const OFF_NR: u32 = 0;
pub const OFF_ARCH: u32 = 4;
pub const OFF_IP_LO: u32 = 8;
pub const OFF_IP_HI: u32 = 12;

fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// The program: `refused` numbers trap from anywhere; `trapped` numbers trap when the
/// instruction pointer lies in libc's text `[lo, hi)`; every other number is allowed on the
/// number alone (before the instruction pointer is loaded), so the kernel's seccomp action
/// cache can allow it without running the program.
///
/// `gate` is the address right after the `syscall` instruction of the library's own gate (the
/// instruction pointer the kernel reports for the library's system calls): a trapped number
/// made from exactly there is allowed after the number compares and two loads and compares of
/// the address (10 instructions for `write`), before the libc-text test. The trapped numbers
/// are compared before the refused ones (they are the ones the program runs for).
#[allow(clippy::cast_possible_truncation)] // the low and high words of the addresses, on purpose
pub fn program(
    lo: u64,
    hi: u64,
    gate: u64,
    trapped: &[u32],
    refused: &[u32],
) -> Result<Vec<Insn>, String> {
    if lo >= hi || (hi - 1) >> 32 > (lo >> 32) + 1 {
        return Err(format!(
            "libc text {lo:#x}..{hi:#x} is empty or crosses more than one 4 GiB boundary"
        ));
    }
    let mut f = vec![
        stmt(LD_ABS, OFF_ARCH),
        jump(JEQ, ARCH_X86_64, 1, 0),
        stmt(RET, RET_ALLOW),
        stmt(LD_ABS, OFF_NR),
    ];
    let n = trapped.len();
    for (i, &nr) in trapped.iter().enumerate() {
        // match: skip the remaining compares, the refused tests and the allow, to the
        // instruction-pointer tests
        let to_ip = u8::try_from(n - i + 2 * refused.len())
            .map_err(|_| "seccomp filter: too many trapped and refused numbers")?;
        f.push(jump(JEQ, nr, to_ip, 0));
    }
    for &nr in refused {
        f.push(jump(JEQ, nr, 0, 1));
        f.push(stmt(RET, RET_TRAP));
    }
    f.push(stmt(RET, RET_ALLOW));
    // the library's gate, exactly (both words): allowed at once
    f.push(stmt(LD_ABS, OFF_IP_LO));
    f.push(jump(JEQ, gate as u32, 0, 3));
    f.push(stmt(LD_ABS, OFF_IP_HI));
    f.push(jump(JEQ, (gate >> 32) as u32, 0, 1));
    f.push(stmt(RET, RET_ALLOW));
    // instruction pointer inside libc text?
    f.push(stmt(LD_ABS, OFF_IP_HI));
    if lo >> 32 == (hi - 1) >> 32 {
        f.push(jump(JEQ, (lo >> 32) as u32, 1, 0));
        f.push(stmt(RET, RET_ALLOW));
        f.push(stmt(LD_ABS, OFF_IP_LO));
        f.push(jump(JGE, lo as u32, 1, 0));
        f.push(stmt(RET, RET_ALLOW));
        // hi may be exactly at the 4 GiB boundary (low word 0): then every ip >= lo is inside
        if hi as u32 == 0 {
            f.push(stmt(RET, RET_TRAP));
        } else {
            f.push(jump(JGE, hi as u32, 0, 1));
            f.push(stmt(RET, RET_ALLOW));
            f.push(stmt(RET, RET_TRAP));
        }
    } else {
        // The text crosses one 4 GiB boundary (address space layout randomisation places it
        // so now and then): `[lo, boundary)` in lo's window, `[boundary, hi)` in the next.
        f.push(jump(JEQ, (lo >> 32) as u32, 2, 0));
        f.push(jump(JEQ, ((lo >> 32) + 1) as u32, 3, 0));
        f.push(stmt(RET, RET_ALLOW));
        f.push(stmt(LD_ABS, OFF_IP_LO));
        f.push(jump(JGE, lo as u32, 3, 2));
        f.push(stmt(LD_ABS, OFF_IP_LO));
        // hi's low word 0 (hi at the next boundary): the whole upper window is inside
        let upper_end = hi as u32;
        f.push(if upper_end == 0 {
            jump(JGE, 0, 1, 1)
        } else {
            jump(JGE, upper_end, 0, 1)
        });
        f.push(stmt(RET, RET_ALLOW));
        f.push(stmt(RET, RET_TRAP));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on (nr, arch, ip) the way the kernel does, for the opcodes it uses;
    /// also says whether the instruction pointer was loaded on the way.
    #[allow(clippy::cast_possible_truncation)]
    fn run(f: &[Insn], nr: u32, arch: u32, ip: u64) -> (u32, bool) {
        let (r, loaded, _) = run_steps(f, nr, arch, ip);
        (r, loaded)
    }

    /// As `run`, plus the number of instructions executed.
    #[allow(clippy::cast_possible_truncation)]
    fn run_steps(f: &[Insn], nr: u32, arch: u32, ip: u64) -> (u32, bool, usize) {
        let (mut pc, mut acc, mut loaded_ip, mut steps) = (0usize, 0u32, false, 0usize);
        loop {
            let i = f[pc];
            steps += 1;
            match i.code {
                LD_ABS => {
                    acc = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_IP_LO => ip as u32,
                        OFF_IP_HI => (ip >> 32) as u32,
                        k => panic!("load of seccomp_data offset {k}"),
                    };
                    loaded_ip |= i.k >= OFF_IP_LO;
                    pc += 1;
                }
                JEQ => pc += 1 + usize::from(if acc == i.k { i.jt } else { i.jf }),
                JGE => pc += 1 + usize::from(if acc >= i.k { i.jt } else { i.jf }),
                RET => return (i.k, loaded_ip, steps),
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    // x86_64 numbers: read 0, write 1, mmap 9, futex 202, openat 257, io_uring_setup 425
    const TRAPPED: &[u32] = &[0, 1, 20, 45, 228];
    const REFUSED: &[u32] = &[425, 426, 427];

    const GATE: u64 = 0x7f55_0000_1000;

    fn check(lo: u64, hi: u64) {
        let f = program(lo, hi, GATE, TRAPPED, REFUSED).unwrap();
        let in_libc = lo + 0x1000;
        let gate = GATE;
        for nr in [9, 202, 257, 5] {
            // allowed from inside libc without the instruction pointer being looked at: the
            // kernel's constant-action cache can take these over
            assert_eq!(
                run(&f, nr, ARCH_X86_64, in_libc),
                (RET_ALLOW, false),
                "nr {nr}"
            );
        }
        for &nr in TRAPPED {
            assert_eq!(
                run(&f, nr, ARCH_X86_64, in_libc).0,
                RET_TRAP,
                "{nr} from libc"
            );
            assert_eq!(
                run(&f, nr, ARCH_X86_64, hi - 1).0,
                RET_TRAP,
                "{nr} at libc's last byte"
            );
            assert_eq!(
                run(&f, nr, ARCH_X86_64, gate).0,
                RET_ALLOW,
                "{nr} from the gate"
            );
            assert_eq!(
                run(&f, nr, ARCH_X86_64, lo - 8).0,
                RET_ALLOW,
                "{nr} below libc"
            );
            assert_eq!(
                run(&f, nr, ARCH_X86_64, hi).0,
                RET_ALLOW,
                "{nr} at libc's end"
            );
        }
        for &nr in REFUSED {
            assert_eq!(run(&f, nr, ARCH_X86_64, gate).0, RET_TRAP, "io_uring {nr}");
        }
        assert_eq!(run(&f, 0, 0x4000_0003, in_libc).0, RET_ALLOW, "other arch");
    }

    #[test]
    fn filter_decides_untrapped_numbers_on_the_number_alone() {
        check(0x7f12_3400_0000, 0x7f12_3418_0000);
        // libc text ending exactly at a 4 GiB boundary
        check(0x7f12_fff0_0000, 0x7f13_0000_0000);
    }

    #[test]
    fn filter_handles_text_across_a_4_gib_boundary() {
        let (lo, hi) = (0x7f12_fff0_0000u64, 0x7f13_0001_0000u64);
        check(lo, hi);
        let f = program(lo, hi, GATE, TRAPPED, REFUSED).unwrap();
        for (ip, want, what) in [
            (0x7f12_ffff_fff0, RET_TRAP, "below the boundary"),
            (0x7f13_0000_0000, RET_TRAP, "at the boundary"),
            (0x7f13_0000_ffff, RET_TRAP, "last byte"),
            (
                0x7f13_fff0_0000,
                RET_ALLOW,
                "lo's low word in the upper window",
            ),
            (
                0x7f12_0000_1000,
                RET_ALLOW,
                "hi's low word in the lower window",
            ),
            (0x7f11_fff0_1000, RET_ALLOW, "the window below"),
            (0x7f14_0000_1000, RET_ALLOW, "the window above"),
        ] {
            assert_eq!(run(&f, 0, ARCH_X86_64, ip).0, want, "{what}");
        }
        // ending exactly at the next boundary: the whole upper window's part is inside
        let f = program(lo, 0x7f14_0000_0000, GATE, TRAPPED, REFUSED).unwrap();
        assert_eq!(run(&f, 0, ARCH_X86_64, 0x7f13_ffff_ffff).0, RET_TRAP);
        assert_eq!(run(&f, 0, ARCH_X86_64, 0x7f14_0000_0000).0, RET_ALLOW);
        // more than one boundary: refused
        assert!(program(lo, 0x7f14_0000_1000, GATE, TRAPPED, REFUSED).is_err());
        assert!(program(hi, hi, GATE, TRAPPED, REFUSED).is_err());
    }

    #[test]
    fn the_gate_is_allowed_exactly_and_first() {
        let (lo, hi) = (0x7f55_0100_0000u64, 0x7f55_0118_0000u64);
        // a gate inside the libc range would be nonsense, but it shows the gate test comes first
        let inside = lo + 0x2000;
        let f = program(lo, hi, inside, TRAPPED, REFUSED).unwrap();
        let (r, _, steps) = run_steps(&f, 1, ARCH_X86_64, inside);
        assert_eq!(r, RET_ALLOW);
        assert_eq!(
            steps, 10,
            "write from the gate: arch (2), nr, read and write compares, gate (4), return"
        );
        // the same low word in another 4 GiB window is not the gate: the libc test decides
        let alias_in = (0x7f12_0000_0000u64) | (GATE & 0xffff_ffff);
        let f = program(alias_in - 0x1000, alias_in + 0x1000, GATE, TRAPPED, REFUSED).unwrap();
        assert_eq!(
            run(&f, 0, ARCH_X86_64, alias_in).0,
            RET_TRAP,
            "same low word, libc"
        );
        assert_eq!(run(&f, 0, ARCH_X86_64, GATE).0, RET_ALLOW, "the gate");
        assert_eq!(
            run(&f, 425, ARCH_X86_64, GATE).0,
            RET_TRAP,
            "io_uring from the gate"
        );
    }
}
