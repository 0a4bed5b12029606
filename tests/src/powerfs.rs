//! `powerfs`: an in-memory FUSE filesystem (fuser crate, pure-Rust mount through
//! `fusermount3`) that models a power cut. Every file keeps an undo log of the writes and
//! truncations made since its last `fsync`; [`PowerFs::power_loss`] rolls every file back to
//! what its last `fsync` made durable (empty for a file never fsynced), exactly the data a
//! machine loses when the power goes before the page cache reached the disk.
//!
//! The namespace (create, mkdir, rename, unlink) is durable at once, as on a journalling
//! filesystem that commits metadata before the data it points to; only file contents are
//! lost. Call [`PowerFs::power_loss`] only while no process has files open on the mount
//! (after `kill -9` of the daemon that used it).
//!
//! Attribute and entry TTLs are zero and no page cache is kept across opens, so what a
//! restarted process reads is what the model holds.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

/// Attributes are never cached by the kernel: a rollback must be seen at once.
const TTL: Duration = Duration::ZERO;

/// An undo log longer than this is folded into one snapshot of the durable content.
const UNDO_FOLD: usize = 4096;

/// One change to a file since its last fsync, enough to take it back.
#[derive(Debug, Clone)]
struct Undo {
    /// Where the overwritten bytes were.
    offset: usize,
    /// The bytes that were there (only those below `old_len`).
    old: Vec<u8>,
    /// The file length before the change.
    old_len: usize,
}

impl Undo {
    /// Takes `data` back to what it was before this change.
    fn revert(&self, data: &mut Vec<u8>) {
        if data.len() < self.old_len {
            data.resize(self.old_len, 0);
        }
        let end = self.offset + self.old.len();
        if end > data.len() {
            data.resize(end, 0);
        }
        data[self.offset..end].copy_from_slice(&self.old);
        data.truncate(self.old_len);
    }
}

/// What an inode is.
#[derive(Debug)]
enum Kind {
    Dir(BTreeMap<OsString, u64>),
    File { data: Vec<u8>, undo: Vec<Undo> },
}

impl Kind {
    /// A new, empty regular file.
    fn empty_file() -> Self {
        Kind::File {
            data: Vec::new(),
            undo: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Inode {
    kind: Kind,
    parent: u64,
    perm: u16,
    mtime: SystemTime,
}

/// The whole filesystem state, behind one lock.
#[derive(Debug)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    /// Bytes rolled back by power losses so far.
    lost_bytes: u64,
    /// Files whose contents a power loss changed.
    lost_files: u64,
    /// fsync calls served.
    fsyncs: u64,
    /// How long each fsync takes before it answers (a stalled disk).
    fsync_delay: Duration,
    /// fsync calls that were held by [`State::fsync_delay`].
    stalled_fsyncs: u64,
}

impl State {
    fn new() -> Self {
        let mut inodes = BTreeMap::new();
        inodes.insert(
            1,
            Inode {
                kind: Kind::Dir(BTreeMap::new()),
                parent: 1,
                perm: 0o755,
                mtime: SystemTime::now(),
            },
        );
        State {
            inodes,
            next_ino: 2,
            lost_bytes: 0,
            lost_files: 0,
            fsyncs: 0,
            fsync_delay: Duration::ZERO,
            stalled_fsyncs: 0,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.inodes.get(&ino)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::Dir(_) => (FileType::Directory, 0, 2),
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm: node.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn children(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get(&ino).map(|n| &n.kind) {
            Some(Kind::Dir(children)) => Ok(children),
            Some(Kind::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn children_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::Dir(children)) => Ok(children),
            Some(Kind::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<(&mut Vec<u8>, &mut Vec<Undo>), Errno> {
        match self.inodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File { data, undo }) => Ok((data, undo)),
            Some(Kind::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// Adds a new inode named `name` under `parent`.
    fn make(&mut self, parent: u64, name: &OsStr, kind: Kind, perm: u16) -> Result<u64, Errno> {
        if self.children(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                kind,
                parent,
                perm,
                mtime: SystemTime::now(),
            },
        );
        self.children_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// The path of every inode reachable from the root, relative to the mount.
    fn paths(&self) -> BTreeMap<u64, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![(1u64, String::new())];
        while let Some((ino, path)) = todo.pop() {
            if let Ok(children) = self.children(ino) {
                for (name, child) in children {
                    let p = format!("{path}/{}", name.to_string_lossy());
                    todo.push((*child, p));
                }
            }
            out.insert(ino, path);
        }
        out
    }

    /// Removes inode `ino` and everything below it.
    fn drop_tree(&mut self, ino: u64) {
        if let Some(node) = self.inodes.remove(&ino) {
            if let Kind::Dir(children) = node.kind {
                for child in children.into_values() {
                    self.drop_tree(child);
                }
            }
        }
    }

    /// Writes `bytes` at `offset`, logging what it overwrites.
    fn write(&mut self, ino: u64, offset: usize, bytes: &[u8]) -> Result<(), Errno> {
        let (data, undo) = self.file_mut(ino)?;
        let old_len = data.len();
        let end = offset + bytes.len();
        let old = data[offset.min(old_len)..end.min(old_len)].to_vec();
        undo.push(Undo {
            offset: offset.min(old_len),
            old,
            old_len,
        });
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset..end].copy_from_slice(bytes);
        fold(data, undo);
        Ok(())
    }

    /// Sets the length of file `ino`, logging what it cuts off.
    fn truncate(&mut self, ino: u64, len: usize) -> Result<(), Errno> {
        let (data, undo) = self.file_mut(ino)?;
        let old_len = data.len();
        let from = len.min(old_len);
        undo.push(Undo {
            offset: from,
            old: data[from..].to_vec(),
            old_len,
        });
        data.resize(len, 0);
        fold(data, undo);
        Ok(())
    }
}

/// Folds a long undo log into one snapshot of the durable content.
fn fold(data: &[u8], undo: &mut Vec<Undo>) {
    if undo.len() <= UNDO_FOLD {
        return;
    }
    let mut durable = data.to_vec();
    for u in undo.iter().rev() {
        u.revert(&mut durable);
    }
    undo.clear();
    undo.push(Undo {
        offset: 0,
        old_len: durable.len(),
        old: durable,
    });
}

/// The filesystem served to the kernel.
#[derive(Debug, Clone)]
struct Fs {
    state: Arc<Mutex<State>>,
}

impl Fs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reply_entry(&self, state: &State, ino: u64, reply: ReplyEntry) {
        match state.attr(ino) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }
}

fn perm(mode: u32) -> u16 {
    (mode & 0o7777) as u16
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.lock();
        match state.children(parent.0).map(|c| c.get(name).copied()) {
            Ok(Some(ino)) => self.reply_entry(&state, ino, reply),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.lock();
        if let Some(size) = size {
            if let Err(e) = state.truncate(ino.0, size as usize) {
                return reply.error(e);
            }
        }
        let Some(node) = state.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(mode) = mode {
            node.perm = perm(mode);
        }
        node.mtime = SystemTime::now();
        match state.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.lock();
        match state.make(parent.0, name, Kind::Dir(BTreeMap::new()), perm(mode)) {
            Ok(ino) => self.reply_entry(&state, ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.lock();
        match state.make(parent.0, name, Kind::empty_file(), perm(mode)) {
            Ok(ino) => self.reply_entry(&state, ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.lock();
        match state.make(parent.0, name, Kind::empty_file(), perm(mode)) {
            Ok(ino) => match state.attr(ino) {
                Some(attr) => reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::empty(),
                ),
                None => reply.error(Errno::EIO),
            },
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.lock();
        let ino = match state.children(parent.0).map(|c| c.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        if state.children(ino).is_ok() {
            return reply.error(Errno::EISDIR);
        }
        if let Ok(children) = state.children_mut(parent.0) {
            children.remove(name);
        }
        state.drop_tree(ino);
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.lock();
        let ino = match state.children(parent.0).map(|c| c.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        match state.children(ino) {
            Ok(c) if !c.is_empty() => return reply.error(Errno::ENOTEMPTY),
            Ok(_) => {}
            Err(e) => return reply.error(e),
        }
        if let Ok(children) = state.children_mut(parent.0) {
            children.remove(name);
        }
        state.drop_tree(ino);
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        let ino = match state.children(parent.0).map(|c| c.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        let replaced = match state.children(newparent.0) {
            Ok(c) => c.get(newname).copied(),
            Err(e) => return reply.error(e),
        };
        if let Some(old) = replaced {
            if old == ino {
                return reply.ok();
            }
            if state.children(old).is_ok_and(|c| !c.is_empty()) {
                return reply.error(Errno::ENOTEMPTY);
            }
            state.drop_tree(old);
        }
        if let Ok(children) = state.children_mut(parent.0) {
            children.remove(name);
        }
        if let Ok(children) = state.children_mut(newparent.0) {
            children.insert(newname.to_owned(), ino);
        }
        if let Some(node) = state.inodes.get_mut(&ino) {
            node.parent = newparent.0;
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.lock().inodes.contains_key(&ino.0) {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.lock();
        match state.file_mut(ino.0) {
            Ok((data, _)) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.lock().write(ino.0, offset as usize, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a sync: nothing becomes durable here.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // A stalled disk: the call waits outside the lock, so other operations go on.
        let delay = {
            let mut state = self.lock();
            if !state.fsync_delay.is_zero() {
                state.stalled_fsyncs += 1;
            }
            state.fsync_delay
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut state = self.lock();
        state.fsyncs += 1;
        match state.file_mut(ino.0) {
            Ok((_, undo)) => {
                undo.clear();
                reply.ok();
            }
            Err(Errno::EISDIR) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.lock();
        let children = match state.children(ino.0) {
            Ok(c) => c,
            Err(e) => return reply.error(e),
        };
        let parent = state.inodes.get(&ino.0).map_or(1, |n| n.parent);
        let mut entries: Vec<(u64, FileType, OsString)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (parent, FileType::Directory, "..".into()),
        ];
        for (name, child) in children {
            let kind = match state.inodes.get(child).map(|n| &n.kind) {
                Some(Kind::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            entries.push((*child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut state = self.lock();
        let end = (offset + length) as usize;
        let result = match state.file_mut(ino.0) {
            Ok((data, _)) if data.len() >= end => Ok(()),
            Ok(_) => state.truncate(ino.0, end),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// What a power loss threw away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PowerLoss {
    /// Files whose contents were rolled back.
    pub files: u64,
    /// Bytes of unsynced writes (and truncations) undone, counted as the undo log holds them.
    pub bytes: u64,
    /// Paths (relative to the mount) of the files rolled back, at most 20.
    pub paths: Vec<String>,
}

/// A mounted powerfs. Dropping it unmounts.
pub struct PowerFs {
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
}

impl std::fmt::Debug for PowerFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerFs")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl PowerFs {
    /// Mounts an empty powerfs on `mountpoint` (created if needed). Fails when FUSE is not
    /// usable here (no `/dev/fuse`, no `fusermount3`, not allowed to mount).
    pub fn mount(mountpoint: &Path) -> anyhow::Result<PowerFs> {
        use anyhow::Context as _;
        anyhow::ensure!(Path::new("/dev/fuse").exists(), "/dev/fuse does not exist");
        std::fs::create_dir_all(mountpoint)
            .with_context(|| format!("create {}", mountpoint.display()))?;
        let state = Arc::new(Mutex::new(State::new()));
        let fs = Fs {
            state: Arc::clone(&state),
        };
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("powerfs".into())];
        config.n_threads = Some(2);
        let session = fuser::spawn_mount(fs, mountpoint, &config)
            .with_context(|| format!("mount powerfs on {}", mountpoint.display()))?;
        let fs = PowerFs {
            mountpoint: mountpoint.to_owned(),
            state,
            session: Some(session),
        };
        // Prove the mount answers before anyone relies on it.
        let probe = mountpoint.join(".probe");
        std::fs::write(&probe, b"ok").with_context(|| format!("write {}", probe.display()))?;
        std::fs::remove_file(&probe).with_context(|| format!("remove {}", probe.display()))?;
        Ok(fs)
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The power goes out: every file returns to the content its last fsync made durable.
    /// Only call it when no process has files open here.
    pub fn power_loss(&self) -> PowerLoss {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut lost = PowerLoss::default();
        let names = state.paths();
        for (ino, node) in state.inodes.iter_mut() {
            if let Kind::File { data, undo } = &mut node.kind {
                if undo.is_empty() {
                    continue;
                }
                lost.files += 1;
                if lost.paths.len() < 20 {
                    lost.paths.push(names.get(ino).cloned().unwrap_or_default());
                }
                for u in undo.drain(..).rev() {
                    lost.bytes +=
                        u.old.len() as u64 + (data.len().saturating_sub(u.old_len)) as u64;
                    u.revert(data);
                }
            }
        }
        state.lost_files += lost.files;
        state.lost_bytes += lost.bytes;
        lost
    }

    /// fsync calls served so far.
    pub fn fsyncs(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).fsyncs
    }

    /// From now on every fsync takes `delay` before it answers (zero: at once again); one
    /// already waiting keeps its delay. The mount serves two calls at a time, so a second
    /// stalled fsync holds up everything else.
    pub fn set_fsync_delay(&self, delay: Duration) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fsync_delay = delay;
    }

    /// fsync calls so far that [`PowerFs::set_fsync_delay`] held (counted as they start).
    pub fn stalled_fsyncs(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stalled_fsyncs
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                eprintln!(
                    "powerfs: unmount of {} failed: {e}",
                    self.mountpoint.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8]) -> (Vec<u8>, Vec<Undo>) {
        (bytes.to_vec(), Vec::new())
    }

    fn rollback(data: &mut Vec<u8>, undo: &mut Vec<Undo>) {
        for u in undo.drain(..).rev() {
            u.revert(data);
        }
    }

    #[test]
    fn undo_restores_writes_and_truncations() {
        let mut state = State::new();
        let ino = state
            .make(
                1,
                OsStr::new("f"),
                Kind::File {
                    data: b"durable".to_vec(),
                    undo: Vec::new(),
                },
                0o644,
            )
            .expect("make");
        state.write(ino, 3, b"XXXXXXXX").expect("write");
        state.truncate(ino, 2).expect("truncate");
        state.write(ino, 20, b"far").expect("write past the end");
        state.truncate(ino, 30).expect("extend");
        let (data, undo) = state.file_mut(ino).expect("file");
        rollback(data, undo);
        assert_eq!(data, b"durable");
    }

    #[test]
    fn folding_keeps_the_durable_content() {
        let (mut data, mut undo) = file(b"base");
        for i in 0..(UNDO_FOLD * 2) {
            let old_len = data.len();
            let offset = i % 7;
            let end = offset + 3;
            let old = data[offset.min(old_len)..end.min(old_len)].to_vec();
            undo.push(Undo {
                offset: offset.min(old_len),
                old,
                old_len,
            });
            if data.len() < end {
                data.resize(end, 0);
            }
            data[offset..end].copy_from_slice(&[i as u8; 3]);
            fold(&data, &mut undo);
        }
        assert!(undo.len() <= UNDO_FOLD + 1);
        rollback(&mut data, &mut undo);
        assert_eq!(data, b"base");
    }
}
