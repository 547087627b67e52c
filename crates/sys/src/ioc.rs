//! Linux `_IOC` ioctl number encoding (x86_64/aarch64 layout: 2 direction bits, 14 size bits,
//! 8 type bits, 8 number bits), for ioctls whose numbers are not in the `libc` crate.

use libc::Ioctl;

const NRSHIFT: u32 = 0;
const TYPESHIFT: u32 = 8;
const SIZESHIFT: u32 = 16;
const DIRSHIFT: u32 = 30;
const WRITE: Ioctl = 1;
const READ: Ioctl = 2;

// ioctl argument structs are far below the 16 KiB the size field holds; usize -> Ioctl (u64
// on 64-bit glibc) cannot truncate them.
#[allow(clippy::cast_possible_truncation)]
const fn ioc(dir: Ioctl, ty: Ioctl, nr: Ioctl, size: usize) -> Ioctl {
    (dir << DIRSHIFT) | (ty << TYPESHIFT) | (nr << NRSHIFT) | ((size as Ioctl) << SIZESHIFT)
}

/// `_IOWR(ty, nr, size)`.
pub(crate) const fn iowr(ty: Ioctl, nr: Ioctl, size: usize) -> Ioctl {
    ioc(READ | WRITE, ty, nr, size)
}

/// `_IOW(ty, nr, size)`.
pub(crate) const fn iow(ty: Ioctl, nr: Ioctl, size: usize) -> Ioctl {
    ioc(WRITE, ty, nr, size)
}

/// `_IOR(ty, nr, size)`.
pub(crate) const fn ior(ty: Ioctl, nr: Ioctl, size: usize) -> Ioctl {
    ioc(READ, ty, nr, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_numbers() {
        // PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg /* 96 bytes */)
        assert_eq!(iowr(0x66, 16, 96), 0xc060_6610);
        // UFFDIO_API = _IOWR(0xAA, 0x3F, struct uffdio_api /* 24 bytes */)
        assert_eq!(iowr(0xAA, 0x3F, 24), 0xc018_aa3f);
        // UFFDIO_UNREGISTER = _IOR(0xAA, 0x01, struct uffdio_range)
        assert_eq!(ior(0xAA, 0x01, 16), 0x8010_aa01);
        // TFD_IOC_SET_TICKS = _IOW('T', 0, u64)
        assert_eq!(iow(0x54, 0, 8), 0x4008_5400);
    }
}
