//! The UMEM: one memory area of equal frames that the kernel and we share, on 2 MiB
//! huge pages when the system has them reserved, else on normal pages.

use std::{io, ptr::NonNull};

const HUGE_PAGE: usize = 2 << 20;

/// A frame-divided memory area.
#[derive(Debug)]
pub(crate) struct Umem {
    area: NonNull<u8>,
    len: usize,
    frame_size: u32,
    frames: u32,
    backing: Backing,
}

#[derive(Debug)]
enum Backing {
    Mmap {
        huge_pages: bool,
    },
    /// Owns the test memory the area points into.
    #[cfg(test)]
    Heap(#[expect(dead_code, reason = "kept alive, read through `area`")] Box<[u8]>),
}

// SAFETY: the area is owned by this value and only accessed through it.
unsafe impl Send for Umem {}

impl Umem {
    /// Maps `frames` frames of `frame_size` bytes (a power of two, 2048 or 4096).
    /// Tries huge pages first; the fallback is reported by [`Self::huge_pages`].
    ///
    /// # Errors
    /// When even a normal mapping fails.
    pub(crate) fn map(frames: u32, frame_size: u32) -> io::Result<Self> {
        let len = frames as usize * frame_size as usize;
        let huge_len = len.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        for (huge_pages, len, flags) in [
            (true, huge_len, flags | libc::MAP_HUGETLB),
            (false, len, flags),
        ] {
            // SAFETY: an anonymous mapping with no address hint.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                if huge_pages {
                    continue;
                }
                return Err(io::Error::last_os_error());
            }
            let area = NonNull::new(p.cast::<u8>())
                .ok_or_else(|| io::Error::other("mmap returned null"))?;
            return Ok(Self {
                area,
                len,
                frame_size,
                frames,
                backing: Backing::Mmap { huge_pages },
            });
        }
        unreachable!("the normal-page attempt returns")
    }

    /// A heap-backed UMEM for tests that play the kernel.
    #[cfg(test)]
    pub(crate) fn heap(frames: u32, frame_size: u32) -> Self {
        let mut buf = vec![0u8; frames as usize * frame_size as usize].into_boxed_slice();
        let area = NonNull::new(buf.as_mut_ptr()).expect("non-null box");
        Self {
            area,
            len: buf.len(),
            frame_size,
            frames,
            backing: Backing::Heap(buf),
        }
    }

    /// Whether the area is on huge pages.
    pub(crate) fn huge_pages(&self) -> bool {
        matches!(self.backing, Backing::Mmap { huge_pages: true })
    }

    pub(crate) fn frame_size(&self) -> u32 {
        self.frame_size
    }

    pub(crate) fn frames(&self) -> u32 {
        self.frames
    }

    /// Start address and length, for `XDP_UMEM_REG`.
    pub(crate) fn region(&self) -> (u64, u64) {
        (
            self.area.as_ptr() as u64,
            (self.frames as u64) * self.frame_size as u64,
        )
    }

    /// The bytes at UMEM offset `addr` (as in a descriptor), `len` long, if inside one frame.
    pub(crate) fn bytes(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let (start, len) = self.checked(addr, len)?;
        // SAFETY: inside the area (checked), and the frame is ours (the caller holds its descriptor).
        Some(unsafe { std::slice::from_raw_parts(self.area.as_ptr().add(start), len) })
    }

    /// Mutable access to a whole frame at `addr` (a frame's base address).
    pub(crate) fn frame_mut(&mut self, addr: u64) -> Option<&mut [u8]> {
        let (start, len) = self.checked(addr, self.frame_size)?;
        // SAFETY: inside the area; the frame is ours (taken from our free list).
        Some(unsafe { std::slice::from_raw_parts_mut(self.area.as_ptr().add(start), len) })
    }

    /// Validates that `[addr, addr + len)` lies within one frame.
    fn checked(&self, addr: u64, len: u32) -> Option<(usize, usize)> {
        let frame = addr / u64::from(self.frame_size);
        let offset = addr % u64::from(self.frame_size);
        if frame >= u64::from(self.frames) || offset + u64::from(len) > u64::from(self.frame_size) {
            return None;
        }
        Some((addr as usize, len as usize))
    }

    /// The base address of the frame containing `addr`.
    pub(crate) fn frame_base(&self, addr: u64) -> u64 {
        addr - addr % u64::from(self.frame_size)
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        if matches!(self.backing, Backing::Mmap { .. }) {
            // SAFETY: unmapping the mapping we made; no references outlive self.
            unsafe { libc::munmap(self.area.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_bounds_checks_frames() {
        let mut umem = Umem::map(64, 4096).unwrap();
        assert_eq!(umem.region().1, 64 * 4096);
        umem.frame_mut(4096 * 63).unwrap()[4095] = 7;
        assert_eq!(umem.bytes(4096 * 63 + 4095, 1).unwrap(), &[7]);
        assert!(umem.frame_mut(4096 * 64).is_none());
        assert!(
            umem.bytes(4096 * 63 + 4000, 97).is_none(),
            "crosses the frame end"
        );
        assert_eq!(umem.frame_base(4096 * 5 + 256), 4096 * 5);
    }
}
