//! Native Linux backend (namespaces, cgroups, overlayfs, veth).
