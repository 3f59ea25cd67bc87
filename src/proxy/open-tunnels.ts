/**
 * The open tunnels of one proxy, by upstream: what drain, removal (a reload or an API write)
 * and shutdown act on. A drained or removed upstream's tunnels may go on for the grace period,
 * then are closed; undraining in time keeps them.
 */
import type { Upstream } from '../upstream/upstream.ts';
import type { TunnelCloseReason } from '../downstream/tunnel.ts';
import type { Exchange } from './exchange.ts';

export class OpenTunnels {
  private readonly byUpstream = new Map<Upstream, Set<Exchange>>();
  /** Closings scheduled per upstream (drain or removal), with their reason. */
  private readonly closing = new Map<Upstream, NodeJS.Timeout>();
  size = 0;
  /** Called when the last tunnel is gone (shutdown waits for it). */
  private onEmpty: (() => void) | null = null;

  add(ex: Exchange): void {
    const u = ex.upstream!;
    let set = this.byUpstream.get(u);
    if (set === undefined) this.byUpstream.set(u, (set = new Set()));
    set.add(ex);
    this.size++;
  }

  delete(ex: Exchange): void {
    const u = ex.upstream!;
    const set = this.byUpstream.get(u);
    if (set === undefined || !set.delete(ex)) return;
    this.size--;
    if (this.size === 0 && this.onEmpty !== null) {
      const resolve = this.onEmpty;
      this.onEmpty = null;
      resolve();
    }
    if (set.size === 0) {
      this.byUpstream.delete(u);
      const timer = this.closing.get(u);
      if (timer !== undefined) clearTimeout(timer);
      this.closing.delete(u);
    }
  }

  /** Tunnels open to `upstream`. */
  countFor(upstream: Upstream): number {
    return this.byUpstream.get(upstream)?.size ?? 0;
  }

  /** Closes `upstream`'s tunnels after `graceMs` (0: now), unless `keep` is called first. */
  closeLater(upstream: Upstream, graceMs: number, reason: TunnelCloseReason): void {
    if (!this.byUpstream.has(upstream) || this.closing.has(upstream)) return;
    const run = (): void => {
      this.closing.delete(upstream);
      for (const ex of [...(this.byUpstream.get(upstream) ?? [])]) ex.tunnel?.close(reason);
    };
    if (graceMs <= 0) return run();
    const timer = setTimeout(run, graceMs);
    timer.unref();
    this.closing.set(upstream, timer);
  }

  /** Cancels a scheduled closing (the upstream was undrained, or came back in a reload). */
  keep(upstream: Upstream): void {
    const timer = this.closing.get(upstream);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.closing.delete(upstream);
  }

  /** Upstreams with open tunnels. */
  upstreams(): Upstream[] {
    return [...this.byUpstream.keys()];
  }

  /** Resolves once no tunnel is open (at once if none is). */
  whenEmpty(): Promise<void> {
    if (this.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const before = this.onEmpty;
      this.onEmpty = () => {
        before?.();
        resolve();
      };
    });
  }

  /** Closes every tunnel now. */
  closeAll(reason: TunnelCloseReason): void {
    for (const timer of this.closing.values()) clearTimeout(timer);
    this.closing.clear();
    for (const set of [...this.byUpstream.values()]) for (const ex of [...set]) ex.tunnel?.close(reason);
  }
}
