// Package link emulates a wide-area network link on loopback: a TCP proxy that forwards every
// connection to one target, adding a one-way delay in each direction and capping the rate of
// the link as a whole — one budget per direction, shared by all connections, as on a real
// link (a cap per connection would hand N parallel connections N times the bandwidth).
//
// The kernel of the benchmark machines has no netem, so the delay has to be added in user
// space. Each direction models a bottleneck followed by a propagation delay: a chunk read from
// one side waits for its turn on the direction's pacer (serialisation at the link's rate, in
// the order chunks arrive, whichever connection they belong to), then travels for the one-way
// delay before it is written to the other side. A new connection pays one round trip before
// its first byte travels, as the TCP handshake would on the real link.
//
// The link counts the bytes it carries in each direction, exactly.
package link
