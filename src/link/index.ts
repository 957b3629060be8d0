/**
 * Attaching programs to the kernel's hooks: tc (clsact), with the rtnetlink dump that
 * tells ctmapd's filters from everyone else's, and interface names; cgroup hooks (sockops,
 * cgroup_skb, sock_release) through pinned bpf_links.
 */
export * from './tc';
export * from './rtnetlink';
export * from './ifname';
export * from './cgroup';
