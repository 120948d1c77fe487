//! One-sided reads and progress: posting reads of a peer's arena in
//! chunks below `max_msg_size`, at most `tx_attr.size` in flight, polling
//! the CQ and filing each completion under the operation that posted it,
//! and the progress thread for providers that move nothing unless polled.

use super::*;

impl Fabric {
    /// Drains the CQ into `raw.done`; returns how many completions it read.
    fn poll(&self, raw: &mut Raw) -> usize {
        let mut n = 0;
        if raw.closed {
            return 0;
        }
        let mut entries = [sys::fi_cq_entry {
            op_context: std::ptr::null_mut(),
        }; 16];
        loop {
            // SAFETY: the CQ is open with FI_CQ_FORMAT_CONTEXT, whose entries
            // are `fi_cq_entry`; the buffer holds 16 of them.
            let rc = unsafe {
                let ops = &*(*raw.cq).ops;
                match ops.read {
                    Some(read) => read(raw.cq, entries.as_mut_ptr().cast(), entries.len()),
                    None => return n,
                }
            };
            if rc > 0 {
                for e in &entries[..rc as usize] {
                    if let Some(op) = op_of(raw, e.op_context) {
                        raw.done.insert(op, Ok(()));
                    }
                }
                n += rc as usize;
                continue;
            }
            if rc == -(sys::FI_EAVAIL as isize) {
                // SAFETY: a zeroed error entry is a valid input; the
                // provider fills it.
                let mut e: sys::fi_cq_err_entry = unsafe { std::mem::zeroed() };
                // SAFETY: as above; readerr and strerror are the CQ's own.
                let rc = unsafe {
                    let ops = &*(*raw.cq).ops;
                    match ops.readerr {
                        Some(readerr) => readerr(raw.cq, &mut e, 0),
                        None => return n,
                    }
                };
                if rc > 0 {
                    let msg = self.cq_strerror(raw, &e);
                    if let Some(op) = op_of(raw, e.op_context) {
                        raw.done.insert(op, Err(msg));
                    }
                    n += 1;
                    continue;
                }
            }
            return n;
        }
    }

    fn cq_strerror(&self, raw: &Raw, e: &sys::fi_cq_err_entry) -> String {
        let generic = strerror(self.lib, -(e.err as isize));
        // SAFETY: the CQ's strerror formats the provider's own error data,
        // which stays valid until the next CQ read (we hold the lock).
        let detail = unsafe {
            let ops = &*(*raw.cq).ops;
            match ops.strerror {
                Some(f) if ops.size > std::mem::offset_of!(sys::fi_ops_cq, strerror) => {
                    let mut buf = [0 as std::ffi::c_char; 256];
                    let p = f(
                        raw.cq,
                        e.prov_errno,
                        e.err_data,
                        buf.as_mut_ptr(),
                        buf.len(),
                    );
                    if p.is_null() {
                        String::new()
                    } else {
                        cstr(p)
                    }
                }
                _ => String::new(),
            }
        };
        if detail.is_empty() || detail == generic {
            generic
        } else {
            format!("{generic} ({detail})")
        }
    }

    /// Reads `dst.len()` bytes at `offset` of `peer`'s arena into `dst`,
    /// which must lie in this node's registered arena. Returns when every
    /// byte has landed; fails if the transfer makes no progress for
    /// `stall`, or as soon as `lost()` says the peer is gone (checked
    /// while reads are outstanding and nothing completes: a dead peer's
    /// provider may never answer). On error, [`FabricError::dirty`] says
    /// whether reads may still be landing in `dst`.
    pub(crate) fn read(
        &self,
        peer: &FabricAddr,
        peer_label: &str,
        offset: u64,
        dst: &mut [u8],
        stall: Duration,
        lost: &dyn Fn() -> bool,
    ) -> Result<(), FabricError> {
        let want = dst.len();
        let named = |m: String| {
            format!(
                "RDMA read of {want} bytes from {peer_label} over {} failed: {m}",
                self.provider
            )
        };
        if peer.provider != self.provider {
            return Err(err(named(format!(
                "the peer's provider is {}, this node's {}",
                peer.provider, self.provider
            ))));
        }
        let Some((start, len, _)) = *self.region.lock().unwrap_or_else(|p| p.into_inner()) else {
            return Err(err(named("the arena is not registered".into())));
        };
        let d = dst.as_mut_ptr() as usize;
        if d < start || d + dst.len() > start + len {
            return Err(err(named(
                "destination outside the registered arena".into(),
            )));
        }
        let in_peer = offset
            .checked_add(dst.len() as u64)
            .is_some_and(|end| end <= peer.len);
        let Some(remote_base) = peer.base.checked_add(offset).filter(|_| in_peer) else {
            return Err(err(named(format!(
                "bytes {offset}+{want} are outside the peer's {}-byte store",
                peer.len
            ))));
        };
        let chunk = READ_CHUNK.min(self.max_msg).max(1);
        let total = dst.len();
        let mut next = 0usize; // next byte to post
        let mut posted: Vec<u64> = Vec::new();
        let mut failure: Option<String> = None;
        let mut last_progress = Instant::now();
        let mut spins = 0u32;
        loop {
            let mut progressed = false;
            {
                let mut raw = self.lock();
                if raw.closed {
                    return Err(err(named("the endpoint is closed".into())));
                }
                let fi_addr = match self.peer(&mut raw, peer) {
                    Ok(a) => a,
                    Err(e) => {
                        return Err(FabricError {
                            message: named(e.message),
                            dirty: false,
                        })
                    }
                };
                // Post while there is room.
                while failure.is_none() && next < total && posted.len() < self.depth {
                    let n = chunk.min(total - next);
                    let op = self.next_op.fetch_add(1, Ordering::Relaxed);
                    let mut ctx = Box::new([0u64; 8]);
                    let ctx_ptr = ctx.as_mut_ptr().cast::<c_void>();
                    raw.contexts.insert(op, ctx);
                    // SAFETY: `dst[next..next + n]` is inside the registered
                    // region (checked above) and stays borrowed until its
                    // completion is reaped (this function does not return
                    // earlier except with `dirty`); the context block lives
                    // in `raw.contexts` until then; the remote range is the
                    // peer's published registration.
                    let rc = unsafe {
                        let rma = &*(*raw.ep).rma;
                        match rma.read {
                            Some(read) => read(
                                raw.ep,
                                dst.as_mut_ptr().add(next).cast(),
                                n,
                                raw.desc,
                                fi_addr,
                                remote_base + next as u64,
                                peer.key,
                                ctx_ptr,
                            ),
                            None => -(sys::FI_ENOSYS as isize),
                        }
                    };
                    if rc == 0 {
                        posted.push(op);
                        next += n;
                        progressed = true;
                    } else {
                        raw.contexts.remove(&op);
                        if rc != -(sys::FI_EAGAIN as isize) {
                            failure = Some(format!("fi_read: {}", strerror(self.lib, rc)));
                        }
                        break; // back-pressure: poll, then post again
                    }
                }
                if self.poll(&mut raw) > 0 {
                    progressed = true;
                }
                posted.retain(|op| match raw.done.remove(op) {
                    Some(r) => {
                        raw.contexts.remove(op);
                        if let Err(e) = r {
                            failure.get_or_insert(e);
                        }
                        false
                    }
                    None => true,
                });
            }
            self.last_poll
                .store(self.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if posted.is_empty() && (next >= total || failure.is_some()) {
                return match failure {
                    None => Ok(()),
                    Some(m) => {
                        // A connection-oriented provider may have dropped
                        // its connection to the peer with the error: the
                        // next read starts from a fresh address.
                        self.forget_peer(&mut self.lock(), &peer.name);
                        Err(err(named(m)))
                    }
                };
            }
            let quiet = last_progress.elapsed();
            let gone =
                !progressed && quiet > Duration::from_millis(20) && spins % 256 == 0 && lost();
            if progressed {
                last_progress = Instant::now();
                spins = 0;
            } else if quiet > stall || gone {
                // The posted reads still target `dst`: the caller must not
                // reuse it.
                let mut raw = self.lock();
                for op in &posted {
                    raw.abandon(*op);
                }
                let why = if gone {
                    format!("the peer was lost with {} reads in flight", posted.len())
                } else {
                    format!(
                        "no progress for {stall:.0?} with {} reads in flight",
                        posted.len()
                    )
                };
                drop(raw);
                self.forget_peer(&mut self.lock(), &peer.name);
                return Err(FabricError {
                    message: named(why),
                    dirty: true,
                });
            } else {
                spins = spins.wrapping_add(1);
                if spins > 64 {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Drives the provider's progress for reads of this node's arena by
    /// peers, for providers that make progress only when polled. Runs for
    /// the process's life; stays idle while readers are polling anyway.
    pub(crate) fn progress(&self) {
        if !self.manual_progress {
            return;
        }
        // A remote read of this node's arena completes nothing here, so
        // activity is read from the time a poll takes: an idle poll returns
        // in a microsecond or so, one that served a peer (sent its bytes)
        // takes longer. Busy (yielding) while peers are served, then
        // backing off to a millisecond: a peer's read waits at most that
        // long to start, and an idle node costs next to nothing.
        let poll_once = || {
            let t = Instant::now();
            let n = {
                let mut raw = self.lock();
                self.poll(&mut raw)
            };
            (n, t.elapsed())
        };
        let mut idle_polls: Vec<Duration> = (0..32).map(|_| poll_once().1).collect();
        idle_polls.sort();
        let busy_above = idle_polls[idle_polls.len() / 2] * 4 + Duration::from_micros(2);
        let mut idle = Duration::ZERO;
        loop {
            let since_reader = self
                .epoch
                .elapsed()
                .as_nanos()
                .saturating_sub(self.last_poll.load(Ordering::Relaxed) as u128);
            // Readers on this node poll as they go; stay out of their way.
            if since_reader > 1_000_000 {
                let (n, took) = poll_once();
                if n > 0 || took > busy_above {
                    idle = Duration::ZERO;
                }
            }
            if idle.is_zero() {
                std::thread::yield_now();
            } else {
                std::thread::sleep(idle);
            }
            idle = (idle + Duration::from_micros(20)).min(Duration::from_millis(1));
        }
    }

    /// Whether the provider needs a progress thread.
    pub(crate) fn manual_progress(&self) -> bool {
        self.manual_progress
    }
}

/// The operation whose context block is at `ctx`.
fn op_of(raw: &Raw, ctx: *mut c_void) -> Option<u64> {
    raw.contexts
        .iter()
        .find(|(_, c)| c.as_ptr() as *mut c_void == ctx)
        .map(|(op, _)| *op)
}
