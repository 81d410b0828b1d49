; User-mode stage of the default image (included by stage2.asm; 64-bit code).
;
; Entered from lm64 once long mode works.  The kernel built here:
;
;   - a 64-bit TSS (RSP0 follows the running task; IST1 for #DF, IST2 for #PF)
;   - a 256-entry IDT of 64-bit interrupt gates: #UD, #GP, #PF, #DF and every
;     other exception print a "default guest: FAILED: ..." line and exit with
;     their own code; IRQ0 (8259 remapped to 20h) preempts; INT 80h is a
;     DPL-3 system call gate
;   - SYSCALL/SYSRET: EFER.SCE, STAR, LSTAR, FMASK
;   - five tasks with a kernel stack each: the kernel's own (main), task 0
;     (the ring-3 self-test) and tasks 1-3 (the processes); each of tasks 0-3
;     has its own PML4, PDPT, PD and user page table, maps the same user
;     virtual addresses to its own frames, and shares the kernel's identity
;     map of 0-2 MiB supervisor-only
;   - a round-robin scheduler: a task switch is a kernel-stack switch
;     (switch_to saves the callee-saved registers, loads CR3, RSP0 and the
;     SYSCALL stack); yield (by SYSCALL or INT 80h) and the timer interrupt
;     (which saves every general register) both end in it
;
; Task 0 checks the ring transitions: IRETQ to ring 3, INT 80h and SYSCALL
; round trips (the kernel checks the frame and the CPL it came from), and two
; page faults it provokes on purpose (reading a supervisor page, writing a
; read-only user page), delivered on IST2 with the right CR2 and error code.
;
; Tasks 1-3 then run with the PIT at 1 kHz: 200 rounds of "fill one private
; page, yield (SYSCALL on even rounds, INT 80h on odd), check the page",
; then a spin that holds known values in every register until the timer has
; preempted the task twice, then a checksum over the eight private pages,
; printed through the write system call (in pid order: the console is handed
; from process to process) and passed to exit.  The kernel recomputes every
; checksum from the physical frames, and prints only deterministic numbers.
;
; Exit codes (isa-debug-exit; status = 2 * code + 1):
;   0x15 ring-3 self-test     0x16 #UD   0x17 #GP   0x18 #PF   0x19 #DF
;   0x1A other exception or unexpected interrupt
;   0x1B process results wrong (checksum, yield count)
;   0x1C a process failed a check (data after a switch, no preemption,
;        registers not preserved)

        bits 64

USER_CODE32 equ 0x28                    ; STAR[63:48]: SYSRET base
USER_DS     equ 0x30 | 3
USER_CS     equ 0x38 | 3
TSS_SEL     equ 0x40

IDT64       equ 0x30000                 ; 256 x 16 bytes
TSS64       equ 0x31000
IST1_TOP    equ 0x33000                 ; 0x32000-0x32FFF: #DF stack
IST2_TOP    equ 0x35000                 ; 0x34000-0x34FFF: #PF stack
KVARS       equ 0x36000                 ; kernel variables and task table
KSTACKS     equ 0x38000                 ; task i: KSTACKS + i*4K .. + (i+1)*4K
KERNEL_END  equ 0x3C000
SPACES      equ 0x100000                ; space i: + i*16K: PML4, PDPT, PD, user PT
FRAMES      equ 0x110000                ; space i: + i*64K: 16 user frames

USER_BASE   equ 0x400000                ; PD entry 2 of every space
U_CODE      equ USER_BASE               ; page 0: program (read-only)
U_INFO      equ USER_BASE + 0x1000      ; page 1 (read-only): +0 pid, +8 preemptions
U_DATA      equ USER_BASE + 0x2000      ; pages 2-9: private data
U_SCRATCH   equ USER_BASE + 0xA000      ; page 10: program variables
U_STACK_TOP equ USER_BASE + 0x10000     ; page 15: stack
NDATA       equ 8

NPROC       equ 3
NSPACES     equ NPROC + 1
ROUNDS      equ 200                     ; yields per process
MIN_PREEMPT equ 2                       ; timer preemptions each process waits for
SPIN_MAX    equ 1 << 26                 ; ... for at most this many loop iterations
PIT_DIVISOR equ 1193                    ; 1193182 Hz / 1193 = 1 kHz

SYS_WRITE   equ 0                       ; rsi = buffer, rdx = length -> rax = length
SYS_YIELD   equ 1
SYS_EXIT    equ 2                       ; rdi = result
SYS_PING    equ 3                       ; rdi = x -> rax = ~x (the entry checks the caller)
SYS_EXPECT_PF equ 4                     ; rdi = CR2, rsi = error code of the next #PF
SYS_FAIL    equ 5                       ; rdi = exit code, rsi = reason (zero-terminated)

MSR_EFER    equ 0xC0000080
MSR_STAR    equ 0xC0000081
MSR_LSTAR   equ 0xC0000082
MSR_FMASK   equ 0xC0000084

EXIT_RING3  equ 0x15
EXIT_UD     equ 0x16
EXIT_GP     equ 0x17
EXIT_PF     equ 0x18
EXIT_DF     equ 0x19
EXIT_OTHER  equ 0x1A
EXIT_RESULT equ 0x1B
EXIT_PROC   equ 0x1C

; task structure
T_KSP       equ 0                       ; saved kernel RSP (switch_to frame)
T_CR3       equ 8
T_KTOP      equ 16                      ; kernel stack top: RSP0 and SYSCALL stack
T_STATE     equ 24                      ; 1 runnable, 0 exited
T_YIELDS    equ 32
T_PREEMPT   equ 40
T_RESULT    equ 48
T_INFO      equ 56                      ; physical address of the info page
T_SIZE      equ 64

; Test builds (nasm -DFAULT_TEST=n) make task 0 fault at once, to check the
; fatal handlers: 1 #UD, 2 #GP, 3 #PF, 4 #DF (a #GP through a not-present gate).
%ifndef FAULT_TEST
%define FAULT_TEST 0
%endif

; Fails to assemble when %1 > %2.
%macro ASSERT_LE 2
        times 0 - ((%1) > (%2)) db 0
%endmacro

; push / pop the fifteen general registers besides RSP.  After PUSH_ALL:
; [rsp + 0] r15 ... [rsp + 112] rax, and the caller's frame from rsp + 120.
%macro PUSH_ALL 0
        push rax
        push rbx
        push rcx
        push rdx
        push rsi
        push rdi
        push rbp
        push r8
        push r9
        push r10
        push r11
        push r12
        push r13
        push r14
        push r15
%endmacro
%macro POP_ALL 0
        pop r15
        pop r14
        pop r13
        pop r12
        pop r11
        pop r10
        pop r9
        pop r8
        pop rbp
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rbx
        pop rax
%endmacro
R_RDI       equ 72
R_RAX       equ 112
FRAME       equ 120

; Inline string to COM1; preserves every register.
%macro KPRINT 1+
        jmp %%over
%%str:  db %1, 0
%%over:
        push rsi
        push rax
        lea rsi, [%%str]
        call ser_puts64
        pop rax
        pop rsi
%endmacro

%macro SET_GATE 3                       ; vector, handler, type/attr << 8 | IST
        mov edi, %1
        lea rsi, [%2]
        mov edx, %3
        call set_gate
%endmacro
GATE_KERNEL equ 0x8E00                  ; present, DPL 0, 64-bit interrupt gate
GATE_USER   equ 0xEE00                  ; present, DPL 3

; ------------------------------------------------------------------ setup
user_stage:
        mov esi, msg_enter_ring3
        call ser_puts64

        mov edi, IDT64                  ; IDT, TSS, IST stacks, variables, kernel stacks
        xor eax, eax
        mov ecx, (KERNEL_END - IDT64) / 8
        rep stosq

        ; TSS: IST1, IST2, no I/O bitmap; RSP0 is set by switch_to
        mov qword [abs TSS64 + 0x24], IST1_TOP
        mov qword [abs TSS64 + 0x2C], IST2_TOP
        mov word [abs TSS64 + 0x66], 104
        mov ax, TSS_SEL
        ltr ax

        ; IDT: exceptions 0-31 to numbered stubs, the rest to "unexpected"
        xor ebx, ebx
.gates:
        mov edi, ebx
        lea rsi, [unexpected_irq]
        cmp ebx, 32
        jae .set
        mov esi, ebx
        shl esi, 4
        add rsi, exc_stubs
.set:
        mov edx, GATE_KERNEL
        call set_gate
        inc ebx
        cmp ebx, 256
        jb .gates
        SET_GATE 6, exc_ud, GATE_KERNEL
        SET_GATE 8, exc_df, GATE_KERNEL | 1
        SET_GATE 13, exc_gp, GATE_KERNEL
        SET_GATE 14, exc_pf, GATE_KERNEL | 2
        SET_GATE 0x20, irq0, GATE_KERNEL
        SET_GATE 0x27, irq_spurious, GATE_KERNEL
        SET_GATE 0xFF, irq_spurious, GATE_KERNEL ; the local APIC's spurious vector
        SET_GATE 0x80, int80, GATE_USER
%if FAULT_TEST == 4
        and byte [abs IDT64 + 13 * 16 + 5], 0x7F ; #GP gate not present: #GP -> #NP -> #DF
%endif
        lidt [idt64_desc]

        ; SYSCALL: kernel CS 18h / SS 20h; SYSRET: user SS 33h / CS 3Bh
        mov ecx, MSR_EFER
        rdmsr
        or eax, 1                       ; SCE
        wrmsr
        mov ecx, MSR_STAR
        xor eax, eax
        mov edx, (USER_CODE32 << 16) | CODE64
        wrmsr
        mov ecx, MSR_LSTAR
        lea rax, [syscall_entry]
        xor edx, edx
        wrmsr
        mov ecx, MSR_FMASK
        mov eax, 0x47700                ; AC, NT, IOPL, DF, IF, TF cleared on entry
        wrmsr

        ; 8259 pair: master 20h, slave 28h, everything masked but the cascade
        mov al, 0x11
        out 0x20, al
        out 0xA0, al
        mov al, 0x20
        out 0x21, al
        mov al, 0x28
        out 0xA1, al
        mov al, 4
        out 0x21, al
        mov al, 2
        out 0xA1, al
        mov al, 1
        out 0x21, al
        out 0xA1, al
        mov al, 0xFB
        out 0x21, al
        mov al, 0xFF
        out 0xA1, al

        ; address spaces and tasks: 0 = self-test, 1..3 = processes
        xor ebx, ebx
.spaces:
        mov edi, ebx
        lea rsi, [user_test]
        mov edx, user_test_end - user_test
        test ebx, ebx
        jz .build
        lea rsi, [user_proc]
        mov edx, user_proc_end - user_proc
.build:
        call build_space
        mov edi, ebx
        call init_task
        inc ebx
        cmp ebx, NSPACES
        jb .spaces
        lea rax, [main_task]
        mov qword [rax + T_CR3], PML4
        mov qword [rax + T_KTOP], 0x7C00
        mov [cur_task], rax

        ; ---- stage 1: task 0 alone, no timer
        lea rax, [tasks]
        mov [sched_begin], rax
        add rax, T_SIZE
        mov [sched_end], rax
        mov qword [console_turn], 0
        lea rdi, [tasks]
        call switch_to                  ; back here when task 0 has exited
        cmp qword [int80_pings], 1
        jne .stage1_bad
        cmp qword [syscall_pings], 1
        jne .stage1_bad
        cmp qword [pf_hits], 2
        jne .stage1_bad
        cmp qword [tasks + T_STATE], 0
        je .stage2
.stage1_bad:
        KPRINT "default guest: FAILED: ring 3 self-test incomplete", 13, 10
        mov al, EXIT_RING3
        jmp kexit

        ; ---- stage 2: the processes, with the timer
.stage2:
        mov esi, msg_start_procs
        call ser_puts64
        lea rax, [tasks + T_SIZE]
        mov [sched_begin], rax
        add rax, NPROC * T_SIZE
        mov [sched_end], rax
        mov qword [console_turn], 1
        mov al, 0x34                    ; PIT channel 0, lobyte/hibyte, mode 2
        out 0x43, al
        mov al, PIT_DIVISOR & 0xFF
        out 0x40, al
        mov al, PIT_DIVISOR >> 8
        out 0x40, al
        mov al, 0xFA                    ; unmask IRQ0 (and the cascade)
        out 0x21, al
        lea rdi, [tasks + T_SIZE]
        call switch_to                  ; back here when every process has exited
        mov al, 0xFB                    ; timer off: IRQ0 masked, the PIT back at 18.2 Hz
        out 0x21, al
        mov al, 0x36
        out 0x43, al
        xor eax, eax
        out 0x40, al
        out 0x40, al

        ; every process: exited, ROUNDS yields, preempted, checksum right
        mov ebx, 1
.verify:
        mov rdi, rbx
        shl rdi, 6
        add rdi, tasks
        cmp qword [rdi + T_STATE], 0
        jne .bad_result
        cmp qword [rdi + T_YIELDS], ROUNDS
        jne .bad_result
        cmp qword [rdi + T_PREEMPT], MIN_PREEMPT
        jb .bad_preempt
        mov r12, [rdi + T_RESULT]
        mov edi, ebx
        call frames_checksum            ; rax = checksum of the frames, CF = pattern wrong
        jc .bad_result
        cmp rax, r12
        jne .bad_result
        inc ebx
        cmp ebx, NPROC
        jbe .verify
        cmp qword [yield_switches], NPROC * ROUNDS
        jne .bad_result

        KPRINT "processes: "
        mov eax, NPROC
        call kputdec
        KPRINT " x "
        mov eax, ROUNDS
        call kputdec
        KPRINT " yields, "
        mov rax, [yield_switches]
        call kputdec
        KPRINT " context switches on yield, checksums ok", 13, 10
        KPRINT "timer preemption: ok (every process preempted, registers intact)", 13, 10
        ret                             ; back to lm64: the final line

.bad_result:
        KPRINT "default guest: FAILED: process "
        mov eax, ebx
        call kputdec
        KPRINT " results wrong", 13, 10
        mov al, EXIT_RESULT
        jmp kexit
.bad_preempt:
        KPRINT "default guest: FAILED: process "
        mov eax, ebx
        call kputdec
        KPRINT " never preempted by the timer", 13, 10
        mov al, EXIT_PROC
        jmp kexit

; AL -> isa-debug-exit, then halt.
kexit:
        out EXIT_PORT, al
.halt:
        cli
        hlt
        jmp .halt

; set_gate(edi = vector, rsi = handler, dx = type/attr << 8 | IST)
set_gate:
        shl edi, 4
        add edi, IDT64
        mov rax, rsi
        mov [rdi], ax
        mov word [rdi + 2], CODE64
        mov [rdi + 4], dx
        shr rax, 16
        mov [rdi + 6], ax
        shr rax, 16
        mov [rdi + 8], eax
        mov dword [rdi + 12], 0
        ret

; build_space(edi = space, rsi = program, edx = program length)
build_space:
        push rbx
        mov ebx, edi
        mov r10, rsi
        mov r11, rdx
        mov r8d, ebx                    ; r8: tables
        shl r8d, 14
        add r8d, SPACES
        mov r9d, ebx                    ; r9: frames
        shl r9d, 16
        add r9d, FRAMES
        xor eax, eax
        mov edi, r8d
        mov ecx, 4 * 512
        rep stosq
        mov edi, r9d
        mov ecx, 16 * 512
        rep stosq
        lea eax, [r8 + 0x1000 + 7]
        mov [r8], rax                   ; PML4[0] -> PDPT (user, writable)
        lea eax, [r8 + 0x2000 + 7]
        mov [r8 + 0x1000], rax          ; PDPT[0] -> PD
        mov qword [r8 + 0x2000], PT64 | 3 ; PD[0] -> the kernel's 0-2 MiB table (supervisor)
        lea eax, [r8 + 0x3000 + 7]
        mov [r8 + 0x2000 + 2 * 8], rax  ; PD[2] -> user table (4 MiB)
        lea eax, [r9 + 5]
        mov [r8 + 0x3000], rax          ; code: user, read-only
        lea eax, [r9 + 0x1000 + 5]
        mov [r8 + 0x3000 + 8], rax      ; info: user, read-only
        mov ecx, 2
.data:
        mov eax, ecx
        shl eax, 12
        lea eax, [rax + r9 + 7]
        mov [r8 + 0x3000 + rcx * 8], rax ; data and scratch: user, writable
        inc ecx
        cmp ecx, 10
        jbe .data
        lea eax, [r9 + 0xF000 + 7]
        mov [r8 + 0x3000 + 15 * 8], rax ; stack
        mov rsi, r10
        mov edi, r9d
        mov rcx, r11
        rep movsb
        mov [r9 + 0x1000], rbx          ; info: pid
        pop rbx
        ret

; init_task(edi = index): a kernel stack that switch_to "returns" into
; task_entry, which IRETQs to the program at ring 3.
init_task:
        mov eax, edi
        shl eax, 6
        lea rdx, [tasks]
        add rdx, rax
        mov eax, edi
        shl eax, 14
        add eax, SPACES
        mov [rdx + T_CR3], rax
        mov eax, edi
        shl eax, 16
        add eax, FRAMES + 0x1000
        mov [rdx + T_INFO], rax
        lea eax, [rdi + 1]
        shl eax, 12
        add eax, KSTACKS
        mov [rdx + T_KTOP], rax
        mov qword [rdx + T_STATE], 1
        sub rax, 12 * 8
        mov [rdx + T_KSP], rax          ; 6 callee-saved registers (zero) ...
        lea rcx, [task_entry]
        mov [rax + 6 * 8], rcx          ; ... switch_to's return address ...
        mov qword [rax + 7 * 8], U_CODE ; ... and the IRETQ frame
        mov qword [rax + 8 * 8], USER_CS
        mov qword [rax + 9 * 8], 0x202
        mov qword [rax + 10 * 8], U_STACK_TOP
        mov qword [rax + 11 * 8], USER_DS
        ret

task_entry:
        xor eax, eax
        xor ebx, ebx
        xor ecx, ecx
        xor edx, edx
        xor esi, esi
        xor edi, edi
        xor ebp, ebp
        xor r8d, r8d
        xor r9d, r9d
        xor r10d, r10d
        xor r11d, r11d
        xor r12d, r12d
        xor r13d, r13d
        xor r14d, r14d
        xor r15d, r15d
        iretq

; frames_checksum(edi = pid) -> rax: the checksum of the pid's data frames,
; read through the kernel's identity map; CF set if any qword is not what
; the last round wrote there.
frames_checksum:
        push rbx
        mov r8, rdi                     ; pid
        shl edi, 16
        add edi, FRAMES + 0x2000
        xor eax, eax
        xor edx, edx                    ; page
.page:
        mov r9, r8                      ; value = pid << 56 | round << 32 | page << 16 | index
        shl r9, 56
        lea r10, [rdx + ROUNDS - NDATA] ; the last round that wrote this page
        shl r10, 32
        or r9, r10
        mov r10, rdx
        shl r10, 16
        or r9, r10
        xor ecx, ecx
.qword:
        lea r10, [r9 + rcx]
        mov rbx, [rdi]
        cmp rbx, r10
        jne .bad
        rol rax, 7
        add rax, rbx
        add rdi, 8
        inc ecx
        cmp ecx, 512
        jb .qword
        inc edx
        cmp edx, NDATA
        jb .page
        clc
        pop rbx
        ret
.bad:
        stc
        pop rbx
        ret

; ------------------------------------------------------------ scheduling
; switch_to(rdi = next task): save the callee-saved registers and RSP in the
; current task, load the next task's RSP, CR3 (always: a yield to oneself
; reloads it too), RSP0 and SYSCALL stack.  Returns in the next task.
switch_to:
        push rbx
        push rbp
        push r12
        push r13
        push r14
        push r15
        mov rax, [cur_task]
        mov [rax + T_KSP], rsp
        mov [cur_task], rdi
        mov rsp, [rdi + T_KSP]
        mov rax, [rdi + T_CR3]
        mov cr3, rax
        mov rax, [rdi + T_KTOP]
        mov [abs TSS64 + 4], rax
        mov [syscall_kstack], rax
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbp
        pop rbx
        ret

; schedule: round robin to the next runnable task after the current one in
; [sched_begin, sched_end) (possibly the current one); none left: main.
schedule:
        mov rax, [cur_task]
        mov rdi, rax
.next:
        add rdi, T_SIZE
        cmp rdi, [sched_end]
        jb .check
        mov rdi, [sched_begin]
.check:
        cmp qword [rdi + T_STATE], 1
        je switch_to
        cmp rdi, rax
        jne .next
        lea rdi, [main_task]
        jmp switch_to

; ------------------------------------------------------ system call entries
; SYSCALL: IF is clear (FMASK), RCX = user RIP, R11 = user RFLAGS.
syscall_entry:
        mov [user_rsp_tmp], rsp
        mov rsp, [syscall_kstack]
        push qword [user_rsp_tmp]
        push r11
        push rcx
        PUSH_ALL
        cmp eax, SYS_PING
        jne .dispatch
        mov rax, [rsp + FRAME]          ; came from the user code page ...
        sub rax, U_CODE
        cmp rax, 0x1000
        jae .bad
        test qword [rsp + FRAME + 8], 0x200 ; ... with IF set ...
        jz .bad
        mov rax, [rsp + FRAME + 16]     ; ... on the user stack ...
        sub rax, U_STACK_TOP - 0x1000
        cmp rax, 0x1000
        ja .bad
        mov ax, cs                      ; ... and we are at CPL 0
        cmp ax, CODE64
        jne .bad
        inc qword [syscall_pings]
        mov rax, [rsp + R_RDI]
        not rax
        jmp .return
.dispatch:
        call sys_dispatch
.return:
        mov [rsp + R_RAX], rax
        POP_ALL
        pop rcx
        pop r11
        pop rsp
        o64 sysret
.bad:
        KPRINT "default guest: FAILED: SYSCALL entry state wrong", 13, 10
        mov al, EXIT_RING3
        jmp kexit

; INT 80h (DPL 3 gate): the frame is on the task's RSP0 stack.
int80:
        PUSH_ALL
        cmp eax, SYS_PING
        jne .dispatch
        cmp qword [rsp + FRAME + 8], USER_CS
        jne .bad
        cmp qword [rsp + FRAME + 32], USER_DS
        jne .bad
        mov rax, [cur_task]             ; frame at the top of RSP0's stack
        mov rax, [rax + T_KTOP]
        lea rdx, [rsp + FRAME + 40]
        cmp rax, rdx
        jne .bad
        inc qword [int80_pings]
        mov rax, [rsp + R_RDI]
        not rax
        jmp .return
.dispatch:
        call sys_dispatch
.return:
        mov [rsp + R_RAX], rax
        POP_ALL
        iretq
.bad:
        KPRINT "default guest: FAILED: INT 80h frame wrong", 13, 10
        mov al, EXIT_RING3
        jmp kexit

; rax = number, rdi/rsi/rdx = arguments -> rax
sys_dispatch:
        cmp eax, SYS_WRITE
        je sys_write
        cmp eax, SYS_YIELD
        je sys_yield
        cmp eax, SYS_EXIT
        je sys_exit
        cmp eax, SYS_EXPECT_PF
        je sys_expect_pf
        cmp eax, SYS_FAIL
        je sys_fail
        mov rax, -38                    ; ENOSYS
        ret

; write(rsi, rdx): the buffer must lie in the user window.  Processes write
; in pid order: a caller whose turn it is not yields inside the kernel.
sys_write:
        cmp rsi, USER_BASE
        jb .efault
        lea rcx, [rsi + rdx]
        cmp rcx, rsi
        jb .efault
        cmp rcx, U_STACK_TOP
        ja .efault
.wait:
        mov rax, [cur_task]
        mov rax, [rax + T_INFO]
        mov rax, [rax]                  ; pid
        cmp rax, [console_turn]
        je .print
        push rsi
        push rdx
        call schedule
        pop rdx
        pop rsi
        jmp .wait
.print:
        mov rcx, rdx
        jrcxz .done
.char:
        lodsb
        call ser_putc64
        loop .char
.done:
        mov rax, rdx
        ret
.efault:
        mov rax, -14                    ; EFAULT
        ret

sys_yield:
        mov rax, [cur_task]
        inc qword [rax + T_YIELDS]
        inc qword [yield_switches]
        call schedule
        xor eax, eax
        ret

sys_exit:
        mov rax, [cur_task]
        mov [rax + T_RESULT], rdi
        mov qword [rax + T_STATE], 0
        inc qword [console_turn]
        call schedule                   ; never comes back
        KPRINT "default guest: FAILED: exited task resumed", 13, 10
        mov al, EXIT_PROC
        jmp kexit

sys_expect_pf:
        mov [pf_expect_cr2], rdi
        mov [pf_expect_err], rsi
        mov qword [pf_expect], 1
        xor eax, eax
        ret

sys_fail:
        KPRINT "default guest: FAILED: task "
        mov rax, [cur_task]
        mov rax, [rax + T_INFO]
        mov rax, [rax]
        call kputdec
        KPRINT ": "
        push rdi
        call ser_puts64                 ; the reason, from the user's page
        pop rax
        KPRINT 13, 10
        jmp kexit

; ------------------------------------------------------------- interrupts
; IRQ0: save everything, EOI, and preempt a task interrupted at ring 3.
irq0:
        PUSH_ALL
        mov al, 0x20
        out 0x20, al
        inc qword [ticks]
        test byte [rsp + FRAME + 8], 3
        jz .out
        mov rax, [cur_task]
        mov rcx, [rax + T_PREEMPT]
        inc rcx
        mov [rax + T_PREEMPT], rcx
        mov rdx, [rax + T_INFO]
        mov [rdx + 8], rcx              ; visible to the process, read-only
        call schedule
.out:
        POP_ALL
        iretq

irq_spurious:                           ; 8259 IRQ7 or APIC spurious: no EOI
        iretq

; #PF on IST2: expected once after SYS_EXPECT_PF (CR2, error code, from ring
; 3, on the IST2 stack); the task resumes at the address it left in RBX.
exc_pf:
        cmp qword [pf_expect], 0
        je .fatal
        mov qword [pf_expect], 0
        push rax
        lea rax, [rsp + 8]
        sub rax, IST2_TOP - 0x1000
        cmp rax, 0x1000
        jae .bad
        mov rax, cr2
        cmp rax, [pf_expect_cr2]
        jne .bad
        mov rax, [rsp + 8]              ; error code
        cmp rax, [pf_expect_err]
        jne .bad
        cmp qword [rsp + 24], USER_CS
        jne .bad
        inc qword [pf_hits]
        pop rax
        add rsp, 8
        mov [rsp], rbx
        iretq
.bad:
        pop rax
.fatal:
        lea rbx, [msg_pf]
        mov r12d, EXIT_PF
        mov r13d, 14
        jmp fatal_fault
exc_gp:
        lea rbx, [msg_gp]
        mov r12d, EXIT_GP
        mov r13d, 13
        jmp fatal_fault
exc_df:
        lea rbx, [msg_df]
        mov r12d, EXIT_DF
        mov r13d, 8
        jmp fatal_fault
exc_ud:
        push 0
        lea rbx, [msg_ud]
        mov r12d, EXIT_UD
        mov r13d, 6
        jmp fatal_fault

; Stubs for exceptions 0-31 (16 bytes each): push a zero error code where the
; CPU pushes none, then the vector.
        align 16, int3
exc_stubs:
%assign v 0
%rep 32
%if v != 8 && (v < 10 || v > 14) && v != 17 && v != 21 && v != 29 && v != 30
        push 0
%endif
        push v
        jmp exc_other
        align 16, int3
%assign v v + 1
%endrep
exc_other:
        pop r13
        lea rbx, [msg_exception]
        mov r12d, EXIT_OTHER
        jmp fatal_fault

unexpected_irq:
        KPRINT "default guest: FAILED: unexpected interrupt", 13, 10
        mov al, EXIT_OTHER
        jmp kexit

; [rsp] = error code, then the CPU's frame; rbx = message, r12b = exit code,
; r13 = vector.
fatal_fault:
        lea rsi, [msg_fail_prefix]
        call ser_puts64
        mov rsi, rbx
        call ser_puts64
        KPRINT " vector "
        mov rax, r13
        call kputdec
        KPRINT " rip="
        mov rax, [rsp + 8]
        call kputhex
        KPRINT " cs="
        mov rax, [rsp + 16]
        call kputhex
        KPRINT " error="
        mov rax, [rsp]
        call kputhex
        KPRINT " cr2="
        mov rax, cr2
        call kputhex
        KPRINT 13, 10
        mov eax, r12d
        jmp kexit

; ------------------------------------------------------------------ output
kputhex:                                ; rax -> 16 hex digits; preserves registers
        push rax
        push rcx
        push rdx
        mov ecx, 16
.digit:
        rol rax, 4
        mov edx, eax
        and edx, 0xF
        push rax
        lea rax, [hex_digits]
        mov al, [rax + rdx]
        call ser_putc64
        pop rax
        dec ecx
        jnz .digit
        pop rdx
        pop rcx
        pop rax
        ret

kputdec:                                ; rax -> decimal; preserves registers
        push rax
        push rcx
        push rdx
        push rsi
        push rdi
        sub rsp, 32
        lea rdi, [rsp + 31]
        mov byte [rdi], 0
        mov ecx, 10
.digit:
        xor edx, edx
        div rcx
        add dl, '0'
        dec rdi
        mov [rdi], dl
        test rax, rax
        jnz .digit
        mov rsi, rdi
        call ser_puts64
        add rsp, 32
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rax
        ret

; ----------------------------------------------------------- kernel data
        align 8
idt64_desc:
        dw 256 * 16 - 1
        dq IDT64
hex_digits:         db "0123456789ABCDEF"
msg_enter_ring3:    db "entering ring 3", 13, 10, 0
msg_start_procs:    db "starting 3 processes (own page tables; yield and 1 kHz timer preemption)", 13, 10, 0
msg_fail_prefix:    db "default guest: FAILED: ", 0
msg_pf:             db "page fault (#PF)", 0
msg_gp:             db "general protection (#GP)", 0
msg_df:             db "double fault (#DF)", 0
msg_ud:             db "invalid opcode (#UD)", 0
msg_exception:      db "exception", 0

; ================================================================ ring 3
; The programs are position-independent (RIP-relative labels, absolute
; user-window constants) and copied into each space's code frame.

; ---- task 0: the ring-3 self-test
        align 16
user_test:
%if FAULT_TEST == 1
        ud2                             ; -> #UD
%elif FAULT_TEST == 2 || FAULT_TEST == 4
        cli                             ; CPL 3 > IOPL: -> #GP
%elif FAULT_TEST == 3
        mov byte [abs STAGE2_ADDR], 0   ; supervisor page, no SYS_EXPECT_PF: -> #PF
%endif
        mov ax, cs
        and eax, 3
        cmp eax, 3
        jne .not_ring3
        mov eax, SYS_WRITE
        lea rsi, [rel .m_entered]
        mov edx, .m_entered_end - .m_entered
        int 0x80

        mov rdi, 0x0123456789ABCDEF     ; INT 80h round trip
        mov rbx, rdi
        mov eax, SYS_PING
        int 0x80
        not rax
        cmp rax, rbx
        jne .bad_int80
        cmp rdi, rbx
        jne .bad_int80
        mov eax, SYS_WRITE
        lea rsi, [rel .m_int80]
        mov edx, .m_int80_end - .m_int80
        int 0x80

        mov rdi, 0xFEDCBA9876543210     ; SYSCALL round trip
        mov rbx, rdi
        mov eax, SYS_PING
        syscall
        not rax
        cmp rax, rbx
        jne .bad_syscall
        cmp rdi, rbx
        jne .bad_syscall
        mov ax, cs                      ; SYSRET brought us back to ring 3
        cmp ax, USER_CS
        jne .bad_syscall
        mov eax, SYS_WRITE
        lea rsi, [rel .m_syscall]
        mov edx, .m_syscall_end - .m_syscall
        syscall

        mov edi, STAGE2_ADDR            ; read a supervisor page: #PF, P|U
        mov esi, 5
        mov eax, SYS_EXPECT_PF
        syscall
        lea rbx, [rel .pf1]
        mov al, [abs STAGE2_ADDR]
        jmp .no_pf
.pf1:
        mov edi, U_INFO + 0x800         ; write a read-only user page: #PF, P|W|U
        mov esi, 7
        mov eax, SYS_EXPECT_PF
        syscall
        lea rbx, [rel .pf2]
        mov byte [abs U_INFO + 0x800], 1
        jmp .no_pf
.pf2:
        mov eax, SYS_WRITE
        lea rsi, [rel .m_pf]
        mov edx, .m_pf_end - .m_pf
        syscall
        mov eax, SYS_EXIT
        xor edi, edi
        syscall
        ud2

.not_ring3:
        lea rsi, [rel .r_not_ring3]
        jmp .fail
.bad_int80:
        lea rsi, [rel .r_int80]
        jmp .fail
.bad_syscall:
        lea rsi, [rel .r_syscall]
        jmp .fail
.no_pf:
        lea rsi, [rel .r_no_pf]
.fail:
        mov edi, EXIT_RING3
        mov eax, SYS_FAIL
        syscall
        ud2

.m_entered:     db "ring 3: entered", 13, 10
.m_entered_end:
.m_int80:       db "ring 3 -> ring 0 via int 0x80: ok", 13, 10
.m_int80_end:
.m_syscall:     db "ring 3 -> ring 0 via syscall: ok", 13, 10
.m_syscall_end:
.m_pf:          db "ring 3: #PF (IST) on supervisor-page read and read-only-page write: ok", 13, 10
.m_pf_end:
.r_not_ring3:   db "not at CPL 3 after IRETQ", 0
.r_int80:       db "INT 80h round trip", 0
.r_syscall:     db "SYSCALL/SYSRET round trip", 0
.r_no_pf:       db "no #PF where one was due", 0
user_test_end:
        ASSERT_LE user_test_end - user_test, 0x1000

; ---- tasks 1-3: the processes
UV_EXPECT   equ U_SCRATCH                ; 15 register values, then RSP
UV_RSP      equ U_SCRATCH + 15 * 8
UV_SPIN     equ U_SCRATCH + 16 * 8
UV_MSG      equ U_SCRATCH + 0x100

        align 16
user_proc:
        mov r12, [abs U_INFO]           ; pid
        xor r13d, r13d                  ; round
.round:
        call up_fill
        mov eax, SYS_YIELD
        test r13b, 1
        jnz .int80
        syscall
        jmp .yielded
.int80:
        int 0x80
.yielded:
        call up_check
        inc r13
        cmp r13, ROUNDS
        jb .round

        ; Hold known values in every register (one of them counting) until
        ; the timer has preempted us MIN_PREEMPT more times.
        xor ecx, ecx
.expect:
        mov rax, r12
        shl rax, 8
        lea rax, [rax + rcx + 1]
        imul rax, rax, 0x01000193
        rol rax, 29
        mov [abs UV_EXPECT + rcx * 8], rax
        inc ecx
        cmp ecx, 14
        jb .expect
        mov rax, [abs U_INFO + 8]
        add rax, MIN_PREEMPT
        mov [abs UV_EXPECT + 14 * 8], rax ; r15: the preemption count to reach
        mov [abs UV_RSP], rsp
        mov qword [abs UV_SPIN], SPIN_MAX
        mov rax, [abs UV_EXPECT + 0 * 8]
        mov rbx, [abs UV_EXPECT + 1 * 8]
        mov rcx, [abs UV_EXPECT + 2 * 8]
        mov rdx, [abs UV_EXPECT + 3 * 8]
        mov rsi, [abs UV_EXPECT + 4 * 8]
        mov rdi, [abs UV_EXPECT + 5 * 8]
        mov rbp, [abs UV_EXPECT + 6 * 8]
        mov r8, [abs UV_EXPECT + 7 * 8]
        mov r9, [abs UV_EXPECT + 8 * 8]
        mov r10, [abs UV_EXPECT + 9 * 8]
        mov r11, [abs UV_EXPECT + 10 * 8]
        mov r12, [abs UV_EXPECT + 11 * 8]
        mov r13, [abs UV_EXPECT + 12 * 8]
        mov r14, [abs UV_EXPECT + 13 * 8]
        mov r15, [abs UV_EXPECT + 14 * 8]
.spin:
        inc rbp                         ; a register that keeps changing
        inc qword [abs UV_EXPECT + 6 * 8]
        cmp rax, [abs UV_EXPECT + 0 * 8]
        jne .corrupt
        cmp rbx, [abs UV_EXPECT + 1 * 8]
        jne .corrupt
        cmp rcx, [abs UV_EXPECT + 2 * 8]
        jne .corrupt
        cmp rdx, [abs UV_EXPECT + 3 * 8]
        jne .corrupt
        cmp rsi, [abs UV_EXPECT + 4 * 8]
        jne .corrupt
        cmp rdi, [abs UV_EXPECT + 5 * 8]
        jne .corrupt
        cmp rbp, [abs UV_EXPECT + 6 * 8]
        jne .corrupt
        cmp r8, [abs UV_EXPECT + 7 * 8]
        jne .corrupt
        cmp r9, [abs UV_EXPECT + 8 * 8]
        jne .corrupt
        cmp r10, [abs UV_EXPECT + 9 * 8]
        jne .corrupt
        cmp r11, [abs UV_EXPECT + 10 * 8]
        jne .corrupt
        cmp r12, [abs UV_EXPECT + 11 * 8]
        jne .corrupt
        cmp r13, [abs UV_EXPECT + 12 * 8]
        jne .corrupt
        cmp r14, [abs UV_EXPECT + 13 * 8]
        jne .corrupt
        cmp r15, [abs UV_EXPECT + 14 * 8]
        jne .corrupt
        cmp rsp, [abs UV_RSP]
        jne .corrupt
        cmp [abs U_INFO + 8], r15
        jae .preempted
        dec qword [abs UV_SPIN]
        jnz .spin
        lea rsi, [rel .r_no_timer]
        jmp up_fail
.corrupt:
        lea rsi, [rel .r_corrupt]
        jmp up_fail

.preempted:
        mov r12, [abs U_INFO]           ; pid again
        xor eax, eax                    ; checksum of the private pages
        mov esi, U_DATA
        mov ecx, NDATA * 512
.sum:
        rol rax, 7
        add rax, [rsi]
        add rsi, 8
        dec ecx
        jnz .sum
        mov r14, rax

        lea rsi, [rel .m_result]            ; "process N: checksum XXXXXXXXXXXXXXXX"
        mov edi, UV_MSG
        mov ecx, .m_result_end - .m_result
        rep movsb
        mov eax, r12d
        add al, '0'
        mov [abs UV_MSG + .m_pid - .m_result], al
        mov rax, r14
        mov edi, UV_MSG + .m_hex - .m_result
        mov ecx, 16
.hex:
        rol rax, 4
        mov edx, eax
        and edx, 0xF
        lea rsi, [rel .digits]
        mov dl, [rsi + rdx]
        mov [rdi], dl
        inc rdi
        dec ecx
        jnz .hex
        mov eax, SYS_WRITE
        mov esi, UV_MSG
        mov edx, .m_result_end - .m_result
        syscall
        mov eax, SYS_EXIT
        mov rdi, r14
        syscall
        ud2

.m_result:      db "process "
.m_pid:         db "N: checksum "
.m_hex:         db "XXXXXXXXXXXXXXXX", 13, 10
.m_result_end:
.digits:        db "0123456789ABCDEF"
.r_no_timer:    db "no timer preemption", 0
.r_corrupt:     db "registers changed across preemption", 0

; Fill page (round mod 8) with pid << 56 | round << 32 | page << 16 | index.
up_fill:
        call up_page
.store:
        lea rdx, [rax + rcx]
        mov [rdi + rcx * 8], rdx
        inc ecx
        cmp ecx, 512
        jb .store
        ret

; The page filled before the yield must still hold its values.
up_check:
        call up_page
.load:
        lea rdx, [rax + rcx]
        cmp [rdi + rcx * 8], rdx
        jne .bad
        inc ecx
        cmp ecx, 512
        jb .load
        ret
.bad:
        lea rsi, [rel .r_changed]
        jmp up_fail
.r_changed:     db "private page changed across a switch", 0

; r12 = pid, r13 = round -> rdi = page address, rax = value base, ecx = 0
up_page:
        mov ecx, r13d
        and ecx, NDATA - 1
        mov edi, ecx
        shl edi, 12
        add edi, U_DATA
        mov rax, r12
        shl rax, 56
        mov rdx, r13
        shl rdx, 32
        or rax, rdx
        shl ecx, 16
        or rax, rcx
        xor ecx, ecx
        ret

up_fail:                                ; rsi = reason
        mov edi, EXIT_PROC
        mov eax, SYS_FAIL
        syscall
        ud2
user_proc_end:
        ASSERT_LE user_proc_end - user_proc, 0x1000
        ASSERT_LE ROUNDS % NDATA, 0     ; frames_checksum: the last 8 rounds wrote pages 0-7

; ------------------------------------------------------ kernel variables
absolute KVARS
cur_task:       resq 1
sched_begin:    resq 1
sched_end:      resq 1
syscall_kstack: resq 1
user_rsp_tmp:   resq 1
console_turn:   resq 1
ticks:          resq 1
yield_switches: resq 1
int80_pings:    resq 1
syscall_pings:  resq 1
pf_expect:      resq 1
pf_expect_cr2:  resq 1
pf_expect_err:  resq 1
pf_hits:        resq 1
                alignb 64
tasks:          resb T_SIZE * NSPACES
main_task:      resb T_SIZE
kvars_end:
section stage2
        ASSERT_LE kvars_end, KVARS + 0x1000
