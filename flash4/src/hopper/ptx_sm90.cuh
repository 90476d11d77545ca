// Thin wrappers over the sm90a PTX instructions the Hopper kernels are written in
// (ThunderKittens style: one function per instruction family, named after it). Only
// meaningful when compiled for sm_90a; callers guard their kernel bodies with
// FLASH4_SM90A (below) so the sm_80 pass of the same file still compiles.
//
// Shared-memory tiles are laid out the way TMA writes them with CU_TENSOR_MAP_SWIZZLE_128B
// and a box 64 elements (128 bytes) wide: a [rows][64] block of 16-bit values, row r at
// byte 128 r, its 16-byte chunk c stored at chunk c ^ (r % 8). A head dim of 128 is two
// such blocks ("chunks") one after the other. Every block starts 1024-byte aligned, so
// the wgmma descriptor's base offset is 0 and its 128B swizzle mode reads the same layout.
//
// wgmma accumulator layout (m64nN, fp32), per warp w of the warpgroup (rows 16w..16w+15),
// g = lane / 4, t = lane % 4: d[4i + 0, 1] = (row g, cols 8i + 2t, +1), d[4i + 2, 3] = (row
// g + 8, same cols) -- mma.sync's C layout repeated over the N/8 column tiles. The A
// operand from registers has mma.sync's A fragment layout (m16k16 per warp).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FLASH4_SM90A 1
#endif

namespace flash4::hopper {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier -------------------------------------------------------------------------

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(arrivals) : "memory");
}

// Makes the initialised barriers visible to the other threads and to the async proxy (TMA).
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One arrival that also announces `bytes` of transactions (TMA completions) for this phase.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

// Waits until the phase of parity `parity` has completed. A fresh barrier is in phase 0,
// so waiting on parity 1 returns at once (the "previous" phase counts as complete).
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = smem_u32(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (!done);
}

// One 32-bit word of shared memory at a 32-bit shared address (a generic pointer would cost a
// 64-bit register pair). asm volatile with a memory clobber: kept in order with the mbarrier
// arrive / wait around it, which carry the release / acquire.
__device__ __forceinline__ void st_shared_b32(uint32_t addr, int v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ int ld_shared_b32(uint32_t addr) {
  int v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
// 16 bytes, addr 16-aligned.
__device__ __forceinline__ void st_shared_v4(uint32_t addr, int4 v) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ int4 ld_shared_v4(uint32_t addr) {
  int4 v;
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr)
               : "memory");
  return v;
}

// ---- TMA ------------------------------------------------------------------------------

// Box at coordinates (c0 innermost .. c3) of a 4-d tensor map -> shared memory; completes
// `box bytes` of transactions on `bar`. Out-of-range elements arrive as zeros and still
// count towards the bytes. `map` is the address of a __grid_constant__ kernel parameter.
__device__ __forceinline__ void tma_load_4d(void* smem_dst, const void* map, int c0, int c1, int c2, int c3,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(smem_u32(smem_dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(bar))
      : "memory");
}

// Non-tensor bulk copy (cp.async.bulk) of `bytes` contiguous bytes global -> shared,
// completing `bytes` of transactions on `bar`. Both addresses 16-byte aligned, bytes a
// multiple of 16 (PTX ISA, cp.async.bulk). Used by the backward for its per-row lse / D.
__device__ __forceinline__ void bulk_load(void* smem_dst, const void* global_src, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
          smem_u32(smem_dst)),
      "l"(reinterpret_cast<uint64_t>(global_src)), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
}

__device__ __forceinline__ void prefetch_tensormap(const void* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Orders this thread's ordinary shared-memory writes before later async-proxy accesses
// (TMA, wgmma) of the same memory.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---- bulk reduce-add shared -> global (the backward's dQ, FLASH4_HOPPER_DQ=bulk) ---------

// global[box at (c0, c1, c2) of the 3-d tensor map] += the box at smem_src, element-wise and
// atomically per element (the tensor map's dtype: fp32 here). smem_src is laid out as TMA
// writes a box of the map (swizzle included; 1024-byte aligned for the 128-byte swizzle).
// Elements of the box outside the tensor are skipped. Completes in the async proxy: a
// thread's ops join its next bulk_commit_group, and only that thread's bulk_wait_group*
// waits for them. The writes to smem_src before it must be made visible to the async proxy
// (fence_proxy_async by each writing thread, then a barrier) first.
__device__ __forceinline__ void bulk_reduce_add_3d(const void* map, int c0, int c1, int c2, const void* smem_src) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2, %3}], [%4];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(smem_src))
      : "memory");
}
// global[gdst .. gdst + bytes) += smem[smem_src .. + bytes), fp32 element-wise and atomically
// per element, one contiguous run (no tensor map): DqAdd::flat's dQ parts. Both addresses
// 16-byte aligned, bytes a multiple of 16. Completes in the async proxy, as bulk_reduce_add_3d.
__device__ __forceinline__ void bulk_reduce_add_f32(float* gdst, uint32_t smem_src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gdst),
               "r"(smem_src), "r"(bytes)
               : "memory");
}
// Closes this thread's bulk ops issued since the last commit into one bulk async-group.
__device__ __forceinline__ void bulk_commit_group() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// TMA store of one box from shared memory (`smem_src`, in the map's swizzled layout) to the
// tensor at coordinates (c0 .. c3); elements past the tensor's extent are not written. Part of
// this thread's current bulk async-group: bulk_commit_group, then bulk_wait_group_read before
// the source is written again.
__device__ __forceinline__ void tma_store_4d(const void* map, int c0, int c1, int c2, int c3, const void* smem_src) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(smem_src))
               : "memory");
}

// Waits until at most N of this thread's bulk async-groups are pending in reading their
// source: shared memory they read may be overwritten (after a barrier, by other threads too).
// Their writes to global memory may still be in flight.
template <int N>
__device__ __forceinline__ void bulk_wait_group_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
// Waits until at most N of this thread's bulk async-groups are pending at all: with N = 0,
// their writes to global memory have been performed.
template <int N>
__device__ __forceinline__ void bulk_wait_group() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}
// fence.proxy.async.global: orders this thread's generic-proxy accesses of global memory with
// its async-proxy ones (bulk copies / reductions), both ways.
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

// ---- named barriers (bar 0 is __syncthreads) ---------------------------------------------

// Waits at barrier `id` until `threads` threads (this warp's 32 included) have arrived.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Counts this warp towards barrier `id` without waiting.
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- flags in global memory, gpu scope (the backward's deterministic dQ order) ------------

// An acquire load: this thread's later accesses (and, through a barrier after it, those of
// the threads that wait there) are ordered after whatever the releases it reads from ordered
// before them (PTX memory model: release / acquire patterns, causality order).
__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// A relaxed load: no ordering by itself; a fence_acq_rel_gpu after it makes it an acquire
// (PTX memory model: acquire patterns), and the load can be issued early and waited on later.
__device__ __forceinline__ int ld_relaxed_gpu(const int* p) {
  int v;
  asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// fence.acq_rel at gpu scope: with a relaxed write after it, a release of everything ordered
// before it -- this thread's accesses and, through a barrier this thread waited at, those of
// the threads that arrived there (release patterns are cumulative); with a relaxed read
// before it, an acquire for everything after it.
__device__ __forceinline__ void fence_acq_rel_gpu() { asm volatile("fence.acq_rel.gpu;\n" ::: "memory"); }
// *p += v, relaxed (after fence_acq_rel_gpu: a release).
__device__ __forceinline__ void red_relaxed_gpu_add(int* p, int v) {
  asm volatile("red.relaxed.gpu.global.add.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
// The value before *p += v, relaxed (a ticket: only its uniqueness matters). One lane's
// atom, where atomicAdd would add the compiler's warp aggregation (a vote, a popc and a
// shuffle, and registers the Hopper forward's 24-register producer does not have).
__device__ __forceinline__ int atom_relaxed_gpu_add(int* p, int v) {
  int old;
  asm volatile("atom.relaxed.gpu.global.add.s32 %0, [%1], %2;\n" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}

// ---- stmatrix -------------------------------------------------------------------------

// stmatrix.x4: four 8x8 b16 matrices from the warp's registers to shared memory; register j
// of lane (g, t) holds row g, columns 2t, 2t + 1 of matrix j (the mma / wgmma accumulator
// fragment, packed), and lane l gives the address of row l % 8 of matrix l / 8 (16 bytes).
// One instruction where four 32-bit stores per lane did the same.
__device__ __forceinline__ void stmatrix_x4(uint32_t smem_addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr), "r"(r[0]),
               "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// ---- register reallocation between warpgroups ------------------------------------------

template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

// ---- wgmma ----------------------------------------------------------------------------

// Shared-memory matrix descriptor, 128-byte swizzle (PTX ISA "Matrix Descriptor Format"):
// bits 0-13 start address >> 4, 16-29 leading-dimension byte offset >> 4, 32-45
// stride-dimension byte offset >> 4, 49-51 base offset (0: tiles are 1024-aligned),
// 62-63 swizzle mode (1 = 128B).
//  K-major operand (Q, K in S = Q K^T): 8-row groups 1024 bytes apart (SBO); LBO unused.
//    Stepping K by 16 elements inside a 64-wide block adds 32 bytes to the start address
//    (the hardware applies the swizzle to the final address).
//  MN-major operand (V in O += P V, N = head dim): LBO = bytes between 64-column blocks
//    of N, SBO = bytes between 8-row groups of K (1024).
__device__ __forceinline__ uint64_t smem_descriptor(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  uint64_t desc = (smem_addr & 0x3FFFFu) >> 4;
  desc |= uint64_t((lbo_bytes >> 4) & 0x3FFFu) << 16;
  desc |= uint64_t((sbo_bytes >> 4) & 0x3FFFu) << 32;
  desc |= uint64_t(1) << 62;
  return desc;
}

// The descriptor of the operand `bytes` (a multiple of 16) further on, in the same layout: the
// start-address field (bits 0-13, address >> 4) moved on by an add to the low word alone.
// Shared addresses stay below 2^18, so the field never carries into the leading-dimension
// offset above it. The kernels build one descriptor per operand tile and step it with these
// (a constant `bytes` folds into one add): smem_descriptor per wgmma cost ~6 instructions a
// descriptor (mask, shift, or, and a move to a uniform register), ~30% of the d 128
// backward's instructions (ncu and cuobjdump, H200, 2026-12-02; scripts/peer_profile.sh).
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) {
  const uint32_t lo = uint32_t(desc) + (bytes >> 4), hi = uint32_t(desc >> 32);
  return (uint64_t(hi) << 32) | lo;
}

// `raw` (the kernel's dynamic shared memory) rounded up to the next 1024-byte boundary (the
// 128-byte swizzle's atom) by pointer arithmetic on `raw` itself, so the compiler still knows
// the result is shared memory: loads and stores through it are LDS / STS with 32-bit
// addresses, where a round trip through uintptr_t made them generic LD / ST with 64-bit
// address arithmetic.
__device__ __forceinline__ unsigned char* align_smem_1024(unsigned char* raw) {
  return raw + ((1024u - (smem_u32(raw) & 1023u)) & 1023u);
}

// The warp's warpgroup index, as a value the compiler sees is the same in every lane (a
// shuffle from lane 0), so what is computed from it -- wgmma descriptors, tile offsets --
// can live in uniform registers rather than being moved there before every wgmma.
__device__ __forceinline__ int warpgroup_index_uniform() { return __shfl_sync(0xffffffffu, int(threadIdx.x / 128), 0); }

// Must precede the first wgmma of a batch whenever its register operands (accumulators,
// A fragments) were written by ordinary instructions.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit_group() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N of this warpgroup's committed wgmma groups are still in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait_group() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Pins a register operand of an in-flight wgmma in place: the compiler may neither move
// reads / writes of it across this point nor copy it elsewhere in between.
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void fence_operand(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }

// The wgmma shapes below are written out (one function per shape) for the N the kernels
// use; `accumulate` = 0 overwrites d (scale-d false). Each accumulator list (32 / 40 / 64 /
// 128 fp32 registers a thread) is spelled once: FLASH4_WGMMA_D<n> is the "{%0, ..., %n-1}"
// register list, FLASH4_WGMMA_D<n>_OUT its "+f"(d[i]) outputs. FLASH4_WGMMA emits the bf16
// and fp16 forms of one instruction, which differ only in the type suffix; OPERANDS is the
// rest of the instruction after "wgmma.mma_async.sync.aligned.SHAPE.f32.<type>.<type> ",
// PRED the operand number of `accumulate`.
#define FLASH4_WGMMA(T, SHAPE, PRED, OPERANDS, ...)                                              \
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {                                              \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " PRED ", 0;\n"                               \
                 "wgmma.mma_async.sync.aligned." SHAPE ".f32.bf16.bf16 " OPERANDS : __VA_ARGS__); \
  } else {                                                                                       \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " PRED ", 0;\n"                               \
                 "wgmma.mma_async.sync.aligned." SHAPE ".f32.f16.f16 " OPERANDS : __VA_ARGS__);   \
  }
#define FLASH4_WGMMA_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define FLASH4_WGMMA_D32_OUT "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define FLASH4_WGMMA_D40 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39}"
#define FLASH4_WGMMA_D40_OUT "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])
#define FLASH4_WGMMA_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define FLASH4_WGMMA_D64_OUT "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define FLASH4_WGMMA_D128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define FLASH4_WGMMA_D128_OUT "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// D[64 x 64] (+)= A[64 x 16] B[16 x 64], A and B in shared memory, both K-major.
template <typename T>
__device__ __forceinline__ void wgmma_ss_m64n64k16(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  FLASH4_WGMMA(T, "m64n64k16", "%34", FLASH4_WGMMA_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n",
               FLASH4_WGMMA_D32_OUT : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64 x 64] (+)= A[64 x 16] B[16 x 64], A from registers (mma.sync's A fragment layout per
// warp), B in shared memory, MN-major (transposed: imm-trans-b = 1).
template <typename T>
__device__ __forceinline__ void wgmma_rs_m64n64k16(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  FLASH4_WGMMA(T, "m64n64k16", "%37", FLASH4_WGMMA_D32 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n",
               FLASH4_WGMMA_D32_OUT : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}

// D[64 x 128] (+)= A[64 x 16] B[16 x 128], A and B in shared memory, both K-major.
template <typename T>
__device__ __forceinline__ void wgmma_ss_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  FLASH4_WGMMA(T, "m64n128k16", "%66", FLASH4_WGMMA_D64 ", %64, %65, p, 1, 1, 0, 0;\n}\n",
               FLASH4_WGMMA_D64_OUT : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64 x 128] (+)= A[64 x 16] B[16 x 128], A from registers (mma.sync's A fragment layout per
// warp), B in shared memory, MN-major (transposed: imm-trans-b = 1).
template <typename T>
__device__ __forceinline__ void wgmma_rs_m64n128k16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  FLASH4_WGMMA(T, "m64n128k16", "%69", FLASH4_WGMMA_D64 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n",
               FLASH4_WGMMA_D64_OUT : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}
// D[64 x 64] (+)= A[64 x 16] B[16 x 64], A and B in shared memory, both MN-major
// (imm-trans-a = imm-trans-b = 1: A stored [K][M] with M contiguous, B [K][N] with N
// contiguous; each descriptor as the MN-major one above: SBO = bytes between 8-row groups
// of K). The backward's dQ = dS K reads dS^T and K this way.
template <typename T>
__device__ __forceinline__ void wgmma_ss_tt_m64n64k16(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  FLASH4_WGMMA(T, "m64n64k16", "%34", FLASH4_WGMMA_D32 ", %32, %33, p, 1, 1, 1, 1;\n}\n",
               FLASH4_WGMMA_D32_OUT : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}
}  // namespace flash4::hopper
