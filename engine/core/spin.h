/*
 * spin.h - the short spinlock used around queue and waiter-list updates.
 *
 * Critical sections under it are a few pointer moves; a sleeping mutex
 * would turn brief contention into a ~28 us futex wake on these VMs.
 */
#ifndef LP_SPIN_H
#define LP_SPIN_H

#include <sched.h>
#include <stdatomic.h>

static inline void lp_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static inline void lp_spin_lock(_Atomic int *l) {
  for (;;) {
    if (!atomic_exchange_explicit(l, 1, memory_order_acquire)) return;
    int n = 0;
    while (atomic_load_explicit(l, memory_order_relaxed)) {
      lp_cpu_relax();
      if (++n == 256) { /* the holder may have been preempted */
        sched_yield();
        n = 0;
      }
    }
  }
}

static inline void lp_spin_unlock(_Atomic int *l) {
  atomic_store_explicit(l, 0, memory_order_release);
}

#endif
