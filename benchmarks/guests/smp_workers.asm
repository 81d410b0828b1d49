; CPU-bound workers on every CPU: the BSP starts the APs by INIT/SIPI, each CPU
; runs WORKERS_PER_CPU workers of ITERS multiply-add steps (registers only, no
; shared cache lines), adds its result to a shared sum with LOCK XADD and the BSP
; reports the sum once all CPUs are done.  CPUS=1 runs every worker on the BSP.
%include "prologue.inc"
%include "ap_startup.inc"
%ifndef CPUS
%define CPUS 2
%endif
%ifndef WORKERS_PER_CPU
%define WORKERS_PER_CPU 1
%endif
%ifndef ITERS
%define ITERS 50000000
%endif
main:
    mov dword [0xFEE000F0], 0x1FF
%if CPUS > 1
    START_APS
%endif
    mov esi, bsp_done
    jmp work
bsp_done:
    cmp dword [cpus_done], CPUS
    pause
    jne bsp_done
    mov eax, [sum]
    jmp report

work:                                  ; esi: continuation (no stack on the APs)
    mov ebp, WORKERS_PER_CPU
.worker:
    mov ecx, ITERS
    mov eax, 1
.step:
    imul eax, eax, 1103515245
    add eax, 12345
    dec ecx
    jnz .step
    lock xadd [sum], eax
    dec ebp
    jnz .worker
    lock inc dword [cpus_done]
    jmp esi

    AP_TRAMPOLINE
    mov esi, ap_park
    jmp work
ap_park:
    cli
    hlt
    jmp ap_park

align 4
sum: dd 0
cpus_done: dd 0
