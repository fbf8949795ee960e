//! The CPU's collectives: the ranks are threads of this process, each on the CPU backend, that
//! meet in memory. This is the CPU reference of a data-parallel run (each rank with its part of
//! the batch and its own batch-norm statistics, gradients averaged), which the multi-GPU runs
//! are tested against; there is no multi-process or network transport. As with NCCL, a
//! thread's membership is its own, every rank makes the same calls in the same order, and a
//! mean sums the ranks in rank order, so every rank gets the same bits.

use super::super::{CollectiveBackend, NcclId, Storage, ABORTED};
use super::CpuBackend;
use anyhow::{anyhow, bail, Result};
use half::f16;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

/// How long a rank waits for the others at a collective before calling it a deadlock.
const PATIENCE: Duration = Duration::from_secs(60);

/// One rank's side of a collective: what it asked for and its buffers (f16 widened).
struct Offer {
    op: String,
    lens: Vec<usize>,
    f16: Vec<bool>,
    bufs: Vec<Vec<f32>>,
}

/// Where the ranks of one group meet: one collective at a time.
struct Meeting {
    world: usize,
    round: Mutex<Round>,
    turn: Condvar,
}

#[derive(Default)]
struct Round {
    /// Joins so far (the group starts when all `world` ranks joined).
    joined: usize,
    offers: Vec<Option<Offer>>,
    /// Every rank's outcome of the finished collective, until each has taken its own.
    outcome: Option<std::result::Result<Vec<Vec<f32>>, String>>,
    /// Ranks yet to take the outcome; a new collective waits for them.
    taking: usize,
    finished: u64,
    /// Set by [`CollectiveBackend::abort_group`]: every wait and later collective fails.
    aborted: bool,
}

struct Member {
    meeting: Arc<Meeting>,
    rank: usize,
}

thread_local! {
    static MEMBER: RefCell<Option<Member>> = const { RefCell::new(None) };
}

/// Groups being joined, by id (removed once every rank joined).
fn joining() -> MutexGuard<'static, HashMap<[u8; 128], Arc<Meeting>>> {
    static GROUPS: LazyLock<Mutex<HashMap<[u8; 128], Arc<Meeting>>>> =
        LazyLock::new(Default::default);
    GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

impl Meeting {
    fn lock(&self) -> MutexGuard<'_, Round> {
        self.round.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits while `blocked`, at most [`PATIENCE`].
    fn wait_while<'a>(
        &self,
        round: MutexGuard<'a, Round>,
        what: &str,
        blocked: impl FnMut(&mut Round) -> bool,
    ) -> Result<MutexGuard<'a, Round>> {
        let (round, waited) = self
            .turn
            .wait_timeout_while(round, PATIENCE, blocked)
            .unwrap_or_else(|p| p.into_inner());
        if waited.timed_out() {
            let missing: Vec<String> = (0..self.world)
                .filter(|&r| round.offers.get(r).is_none_or(|o| o.is_none()))
                .map(|r| r.to_string())
                .collect();
            bail!(
                "{what}: waited {} s for the other ranks (missing: {}): a deadlock",
                PATIENCE.as_secs(),
                missing.join(", ")
            );
        }
        Ok(round)
    }

    /// Offers this rank's side and returns its outcome once every rank offered.
    fn meet(
        &self,
        rank: usize,
        offer: Offer,
        decide: &dyn Fn(&[Offer]) -> Vec<Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>> {
        let what = format!("cpu rank {rank} of {}: {}", self.world, offer.op);
        let mut round = self.lock();
        // The previous collective's outcome is still being taken.
        round = self.wait_while(round, &what, |r| r.taking > 0 && !r.aborted)?;
        if round.aborted {
            bail!("{what}: {ABORTED}");
        }
        round.offers[rank] = Some(offer);
        if round.offers.iter().all(Option::is_some) {
            let offers: Vec<Offer> = round.offers.iter_mut().map(|o| o.take().unwrap()).collect();
            round.outcome = Some(agree(&offers).map(|()| decide(&offers)));
            round.taking = self.world;
            round.finished += 1;
            self.turn.notify_all();
        } else {
            let at = round.finished;
            round = self.wait_while(round, &what, |r| r.finished == at && !r.aborted)?;
            if round.finished == at {
                round.offers[rank] = None;
                bail!("{what}: {ABORTED}");
            }
        }
        let outcome = round
            .outcome
            .clone()
            .expect("a finished collective's outcome");
        round.taking -= 1;
        if round.taking == 0 {
            round.outcome = None;
            self.turn.notify_all();
        }
        outcome.map_err(|e| anyhow!("{what}: {e}"))
    }
}

/// Every rank asked for the same collective on buffers of the same lengths and dtypes.
fn agree(offers: &[Offer]) -> std::result::Result<(), String> {
    let first = &offers[0];
    for (rank, o) in offers.iter().enumerate().skip(1) {
        if o.op != first.op {
            return Err(format!(
                "ranks 0 and {rank} disagree on the operation ({} vs {})",
                first.op, o.op
            ));
        }
        if o.lens != first.lens || o.f16 != first.f16 {
            return Err(format!(
                "ranks 0 and {rank} disagree on the buffers' counts or dtypes ({:?} vs {:?})",
                first.lens, o.lens
            ));
        }
    }
    Ok(())
}

fn mean(offers: &[Offer]) -> Vec<Vec<f32>> {
    let n = offers.len() as f32;
    (0..offers[0].bufs.len())
        .map(|b| {
            (0..offers[0].bufs[b].len())
                .map(|i| offers.iter().map(|o| o.bufs[b][i]).sum::<f32>() / n)
                .collect()
        })
        .collect()
}

fn widen(s: &Storage, what: &str) -> Result<Vec<f32>> {
    match s {
        Storage::Cpu(v) => Ok(v.clone()),
        Storage::CpuF16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
        _ => bail!("{what}: a buffer is not on the CPU"),
    }
}

fn store(s: &mut Storage, v: &[f32]) {
    match s {
        Storage::Cpu(d) => d.copy_from_slice(v),
        Storage::CpuF16(d) => d
            .iter_mut()
            .zip(v)
            .for_each(|(d, &x)| *d = f16::from_f32(x)),
        _ => unreachable!("checked by widen"),
    }
}

impl CpuBackend {
    fn collective(
        &self,
        op: String,
        bufs: &mut [&mut Storage],
        decide: &dyn Fn(&[Offer]) -> Vec<Vec<f32>>,
    ) -> Result<()> {
        let member = MEMBER.with(|m| m.borrow().as_ref().map(|m| (m.meeting.clone(), m.rank)));
        let Some((meeting, rank)) = member else {
            bail!("{op}: this thread's cpu backend has not joined a group");
        };
        let offer = Offer {
            lens: bufs.iter().map(|b| b.len()).collect(),
            f16: bufs
                .iter()
                .map(|b| matches!(b, Storage::CpuF16(_)))
                .collect(),
            bufs: bufs.iter().map(|b| widen(b, &op)).collect::<Result<_>>()?,
            op,
        };
        let out = meeting.meet(rank, offer, decide)?;
        for (b, v) in bufs.iter_mut().zip(&out) {
            store(b, v);
        }
        Ok(())
    }
}

/// A fresh id for a CPU group: unique within this process.
pub(crate) fn host_group_id() -> NcclId {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut id = [0u8; 128];
    id[..4].copy_from_slice(b"host");
    id[4..12].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    NcclId(id)
}

impl CollectiveBackend for CpuBackend {
    fn new_group_id(&self) -> Result<NcclId> {
        Ok(host_group_id())
    }

    fn join_group(&self, rank: usize, world: usize, id: &NcclId) -> Result<()> {
        let what = format!("cpu rank {rank} of {world}: joining the group");
        if rank >= world {
            bail!("{what}: the rank must be below the group size");
        }
        self.leave_group();
        let meeting = joining()
            .entry(id.0)
            .or_insert_with(|| {
                Arc::new(Meeting {
                    world,
                    round: Mutex::new(Round {
                        offers: (0..world).map(|_| None).collect(),
                        ..Round::default()
                    }),
                    turn: Condvar::new(),
                })
            })
            .clone();
        if meeting.world != world {
            bail!("{what}: the group was made for {} ranks", meeting.world);
        }
        let mut round = meeting.lock();
        round.joined += 1;
        if round.joined == world {
            joining().remove(&id.0);
            meeting.turn.notify_all();
        } else {
            let (r, waited) = meeting
                .turn
                .wait_timeout_while(round, PATIENCE, |r| r.joined < world)
                .unwrap_or_else(|p| p.into_inner());
            if waited.timed_out() {
                bail!(
                    "{what}: only {} of {world} ranks joined in {} s",
                    r.joined,
                    PATIENCE.as_secs()
                );
            }
            round = r;
        }
        drop(round);
        MEMBER.with(|m| *m.borrow_mut() = Some(Member { meeting, rank }));
        Ok(())
    }

    fn all_reduce_mean(&self, bufs: &mut [&mut Storage]) -> Result<()> {
        self.collective("all_reduce_mean".into(), bufs, &mean)
    }

    fn broadcast(&self, bufs: &mut [&mut Storage], root: usize) -> Result<()> {
        let world = self.group_size();
        if root >= world {
            bail!("broadcast from rank {root}: the group has {world} ranks");
        }
        // The root is part of the operation, so ranks that name different roots disagree.
        let from_root = |offers: &[Offer]| offers[root].bufs.clone();
        self.collective(format!("broadcast from rank {root}"), bufs, &from_root)
    }

    fn leave_group(&self) {
        MEMBER.with(|m| *m.borrow_mut() = None);
    }

    fn abort_group(&self) {
        MEMBER.with(|m| {
            if let Some(m) = m.borrow().as_ref() {
                m.meeting.lock().aborted = true;
                m.meeting.turn.notify_all();
            }
        });
    }

    fn group_aborted(&self) -> bool {
        MEMBER.with(|m| {
            m.borrow()
                .as_ref()
                .is_some_and(|m| m.meeting.lock().aborted)
        })
    }

    fn group_size(&self) -> usize {
        MEMBER.with(|m| m.borrow().as_ref().map_or(1, |m| m.meeting.world))
    }
}
