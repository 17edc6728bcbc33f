//! The image cache. So far: `verify`, the pure check that bytes are the image Glance recorded.

pub mod index;
pub mod store;
pub mod verify;
