//! End to end: `understudy restore --lazy` (post-copy). A workload holding a large private
//! anonymous region filled with a known pattern is checkpointed, restored lazily, answers a
//! request while most of its memory is provably still missing (it counts its own non-resident
//! pages with mincore), then checks every page. And a pages file corrupted or truncated while
//! the tree runs gets the tree killed and the command failing with the file named.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The workload's request and answer FIFOs, held open by the test across the checkpoint.
struct Chan {
    req: std::fs::File,
    ans: BufReader<std::fs::File>,
}

impl Chan {
    fn open(dir: &Path) -> Chan {
        let ans = std::fs::File::open(dir.join("ans")).expect("open ans fifo");
        let req = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("req"))
            .expect("open req fifo");
        Chan {
            req,
            ans: BufReader::new(ans),
        }
    }

    /// Sends `c`, returns the answer line ("" when every writer is gone).
    fn ask(&mut self, c: u8) -> String {
        self.req.write_all(&[c]).expect("write request");
        let mut l = String::new();
        let _ = self.ans.read_line(&mut l);
        l.trim().to_string()
    }
}

fn lazy_restore(img: &Path, extra: &[&str]) -> (Child, i32) {
    let mut child = Command::new(BIN)
        .args(["restore", "--lazy", "--image"])
        .arg(img)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run understudy restore --lazy");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read pid line");
    let pid = line.trim().parse().unwrap_or_else(|_| {
        let mut err = String::new();
        let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
        panic!("restore --lazy printed {line:?} instead of a pid; stderr: {err}")
    });
    (child, pid)
}

fn finish(mut child: Child) -> (std::process::ExitStatus, String) {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (child.wait().expect("wait restore --lazy"), err)
}

fn setup(mib: &str) -> (Workload, Chan, std::path::PathBuf) {
    let prog = build("lazy", &[]);
    let w = start_with_arg(&prog, mib);
    let chan = Chan::open(w.dir.path());
    let img = w.dir.path().join("img");
    ok(&checkpoint(w.pid, &img, false), "checkpoint");
    (w, chan, img)
}

#[test]
fn lazy_restore_of_1_gib_answers_before_its_memory_is_in_place() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let (w, mut chan, img) = setup("1024");
    // Through the library, with the background push held back until the answer came: pages
    // arrive only when the workload touches them, so the count below cannot depend on timing.
    let lr = restore::restore_lazy(
        &restore::RestoreOptions {
            image_dir: img.clone(),
            ..Default::default()
        },
        restore::LazyOptions {
            prefetch_pages: 64,
            hold_push: true,
            ..Default::default()
        },
    )
    .expect("restore_lazy");
    assert_eq!(lr.report().root_pid, w.pid);
    let answer = chan.ask(b'q');
    let mut it = answer.split_whitespace();
    assert_eq!(it.next(), Some("missing"), "{answer}");
    let missing: u64 = it.next().and_then(|x| x.parse().ok()).expect("count");
    let total: u64 = it.nth(1).and_then(|x| x.parse().ok()).expect("total");
    assert_eq!(total, 262_144, "{answer}");
    eprintln!("first answer after the lazy restore: {answer}");
    assert!(
        missing > total / 2,
        "the workload answered with only {missing} of {total} pages missing: {answer}"
    );
    let seen = lr.progress();
    assert!(seen.pending_pages > 0, "{seen:?}");
    lr.start_push();
    let sum = lr.wait(|_| {}).expect("lazy restore completes");
    eprintln!("{sum:?}");
    assert_eq!(sum.progress.pending_pages, 0, "{sum:?}");
    assert!(sum.progress.pushed_pages > total / 2, "{sum:?}");
    let verdict = chan.ask(b'c');
    assert!(verdict.starts_with("PASS"), "{verdict}");
}

#[test]
fn lazy_restore_with_background_push_completes_and_the_memory_is_exact() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let (w, mut chan, img) = setup("128");
    let (child, pid) = lazy_restore(&img, &[]);
    assert_eq!(pid, w.pid);
    let (st, err) = finish(child);
    assert!(st.success(), "restore --lazy failed: {st}\n{err}");
    assert!(err.contains("pushed in the background"), "{err}");
    let verdict = chan.ask(b'c');
    assert!(verdict.starts_with("PASS"), "{verdict}");
}

/// Damages the pages file while the tree runs, then makes the workload touch everything.
fn wait_gone(pid: i32) {
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .map(|x| x.1.trim_start().starts_with('Z'))
            == Some(true)
        {
            break;
        }
        assert!(t.elapsed() < PATIENCE, "pid {pid} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killing_the_lazy_restorer_kills_the_tree() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let (w, _chan, img) = setup("64");
    let (mut child, pid) = lazy_restore(&img, &["--push-pages", "0"]);
    assert_eq!(pid, w.pid);
    // SIGKILL: no cleanup runs in the restorer; its guard process must kill the tree.
    child.kill().expect("kill restore --lazy");
    let _ = child.wait();
    wait_gone(pid);
}

fn damaged_source_kills_the_tree(damage: impl FnOnce(&Path, u64), reason: &str) {
    let (w, mut chan, img) = setup("64");
    let pages = img.join(format!("pages-{}.img", w.pid));
    let len = std::fs::metadata(&pages).expect("pages file").len();
    let (child, pid) = lazy_restore(&img, &["--push-pages", "0"]);
    assert_eq!(pid, w.pid);
    damage(&pages, len);
    let verdict = chan.ask(b'c');
    assert!(
        !verdict.starts_with("PASS"),
        "ran on damaged memory: {verdict}"
    );
    let (st, err) = finish(child);
    assert!(
        !st.success(),
        "restore --lazy succeeded on a damaged image: {err}"
    );
    let name = format!("pages-{}.img", w.pid);
    assert!(err.contains(&name) && err.contains(reason), "{err}");
    assert!(err.contains("was killed"), "{err}");
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .map(|x| x.1.trim_start().starts_with('Z'))
            == Some(true)
        {
            break;
        }
        assert!(t.elapsed() < PATIENCE, "pid {pid} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{err}");
}

#[test]
fn lazy_restore_kills_the_tree_when_a_served_page_is_corrupt() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    damaged_source_kills_the_tree(
        |p, len| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            let at = 4096 + (len - 4096) / 2;
            let mut b = [0u8; 1];
            std::fs::File::open(p)
                .unwrap()
                .read_exact_at(&mut b, at)
                .unwrap();
            f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
        },
        "checksum of chunk",
    );
}

#[test]
fn lazy_restore_kills_the_tree_when_the_pages_file_is_truncated() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    damaged_source_kills_the_tree(
        |p, len| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(4096 + (len - 4096) / 4).unwrap();
        },
        "truncated",
    );
}

#[test]
fn lazy_restore_of_an_incremental_chain_is_exact() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    // 16 MiB, 1% rewritten between the full dump and the incremental one: most pages are
    // served from the parent's pages file, the rewritten ones from the child's.
    let w = start_with_arg(&build("incr", &[]), "16");
    let d1 = w.dir.path().join("d1");
    ok(&checkpoint(w.pid, &d1, true), "checkpoint --leave-running");
    std::fs::write(w.dir.path().join("write-0"), b"").unwrap();
    let t = Instant::now();
    while !w.dir.path().join("wrote-0").exists() {
        assert!(t.elapsed() < PATIENCE, "workload did not write");
        std::thread::sleep(Duration::from_millis(10));
    }
    let d2 = w.dir.path().join("d2");
    let o = Command::new(BIN)
        .args(["checkpoint", "--pid", &w.pid.to_string(), "--image"])
        .arg(&d2)
        .arg("--parent")
        .arg(&d1)
        .output()
        .expect("checkpoint --parent");
    ok(&o, "checkpoint --parent");
    let o = Command::new(BIN)
        .args(["restore", "--lazy", "--image"])
        .arg(&d2)
        .output()
        .expect("restore --lazy");
    ok(&o, "restore --lazy of an incremental image");
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

/// Checkpoints `w`, restores it with `restore --lazy` (default push) until every page is in
/// place, and asks it to verify itself.
fn lazy_cycle(w: &Workload) -> String {
    let img = w.dir.path().join("img");
    ok(&checkpoint(w.pid, &img, false), "checkpoint");
    let o = Command::new(BIN)
        .args(["restore", "--lazy", "--image"])
        .arg(&img)
        .output()
        .expect("restore --lazy");
    ok(&o, "restore --lazy");
    let printed: i32 = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("restore --lazy prints the root pid first");
    assert_eq!(printed, w.pid);
    verdict(w)
}

#[test]
fn lazy_restore_fills_shared_memory_eagerly_and_private_memory_lazily() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    // MAP_SHARED anonymous memory and a memfd shared by a parent and 2 children (written
    // eagerly), beside their private memory (served lazily).
    let w = start(&build("shm", &[]));
    let v = lazy_cycle(&w);
    assert!(v.starts_with("PASS"), "shm: {v}");
}

#[test]
fn lazy_restore_of_a_process_tree_and_of_eight_threads() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    // A server thread per process (parent, children, grandchild), pipes in flight.
    let w = start(&build("tree", &[]));
    let v = lazy_cycle(&w);
    assert!(v.starts_with("PASS"), "tree: {v}");
    drop(w);
    // One address space, eight threads faulting concurrently.
    let w = start(&build("threads8", &[]));
    let v = lazy_cycle(&w);
    assert!(v.starts_with("PASS"), "threads8: {v}");
}
