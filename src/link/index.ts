/**
 * Attaching programs to the kernel's hooks: tc (clsact) today, with the rtnetlink dump that
 * tells ctmapd's filters from everyone else's, and interface names. cgroup and sockops
 * attachment belong here too.
 */
export * from './tc';
export * from './rtnetlink';
export * from './ifname';
