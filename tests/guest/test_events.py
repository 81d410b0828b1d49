"""Exceptions and interrupts delivered by the vCPU, checked by what guest handlers saw."""

from __future__ import annotations

from guestlib import protected_mode_guest, run_multiboot_guest


def test_protected_mode_gp_handler_gets_error_code_and_faulting_eip(assemble, tmp_path):
    body = r"""
    LOAD_GDT
    lidt [idtr]
    mov eax, 0xC0DE
fault_insn:
    mov bx, 0x1237            ; RPL 3, index 0x1230 >> 3: beyond the GDT limit
    mov ds, bx                ; -> #GP(0x1234)
after:
    PRINT "resumed at after", 10
    mov al, 0
    call exit

gp_handler:
    PRINT "GP error="
    mov eax, [esp]
    call puthex
    PRINT " eip-ok="
    mov eax, [esp + 4]
    cmp eax, fault_insn + 4   ; the mov ds, bx
    sete al
    add al, '0'
    call putc
    PRINT " cs="
    mov eax, [esp + 8]
    call puthex
    mov al, 10
    call putc
    add dword [esp + 4], 2    ; skip the faulting mov ds
    add esp, 4                ; drop the error code
    iret

    IDT_GP32 gp_handler
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body))
    assert out == "GP error=00001234 eip-ok=1 cs=00000008\nresumed at after\n"
    assert result.exit_status == 1


def test_ring3_interrupt_switches_to_tss_stack_and_checks_gate_dpl(assemble, tmp_path):
    body = r"""
    LOAD_GDT
    lidt [idtr]
    mov dword [tss + 4], kstack_top   ; esp0
    mov dword [tss + 8], 0x10         ; ss0
    SET_TSS tss, 0x89
    ; iret to ring 3
    push 0x23
    push ustack_top
    pushf
    push 0x1B
    push user_code
    iret

user_code:
    mov eax, 0x11111111
    int 0x80                  ; gate DPL 3: allowed
int81_at:
    int 0x81                  ; gate DPL 0: #GP(0x81 * 8 + 2), a fault of the INT itself
    mov al, 0x7E
    call exit                 ; not reached: the #GP handler ends the test

syscall_handler:
    PRINT "int80 from cpl="
    mov eax, [esp + 4]        ; CS pushed by the CPU
    and eax, 3
    call puthex
    PRINT " on kernel stack="
    mov eax, esp
    cmp eax, kstack_top - 20
    sete al
    add al, '0'
    call putc
    PRINT " user esp="
    mov eax, [esp + 12]
    cmp eax, ustack_top
    sete al
    add al, '0'
    call putc
    PRINT " ss="
    mov eax, [esp + 16]
    call puthex
    mov al, 10
    call putc
    iret

gp_handler:
    PRINT "GP error="
    mov eax, [esp]
    call puthex
    PRINT " at the int="          ; the saved EIP is the INT's, not the next one's
    cmp dword [esp + 4], int81_at
    sete al
    add al, '0'
    call putc
    mov al, 10
    call putc
    mov al, 0
    call exit

align 8
idt:
    times 13 dq 0
    GATE32 gp_handler, 0x08, 0x8E
    times 0x80 - 14 dq 0
    GATE32 syscall_handler, 0x08, 0xEE
    GATE32 syscall_handler, 0x08, 0x8E
idt_end:
idtr:
    dw idt_end - idt - 1
    dd idt

align 16
tss: times 0x68 db 0
    times 1024 db 0
kstack_top:
    times 1024 db 0
ustack_top:
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body))
    assert out == ("int80 from cpl=00000003 on kernel stack=1 user esp=1 ss=00000023\n"
                   "GP error=0000040A at the int=1\n")
    assert result.exit_status == 1


def test_double_fault_when_gp_gate_is_not_present(assemble, tmp_path):
    body = r"""
    LOAD_GDT
    lidt [idtr]
    mov bx, 0x1230
    mov ds, bx                ; #GP -> gate not present -> #NP -> #DF
    mov al, 0x7E
    call exit

df_handler:
    PRINT "DF error="
    mov eax, [esp]
    call puthex
    mov al, 10
    call putc
    mov al, 0
    call exit

align 8
idt:
    times 8 dq 0
    GATE32 df_handler, 0x08, 0x8E
    times 4 dq 0
    GATE32 df_handler, 0x08, 0x0E   ; #GP gate, present bit clear
idt_end:
idtr:
    dw idt_end - idt - 1
    dd idt
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body))
    assert out == "DF error=00000000\n"
    assert result.exit_status == 1


def test_triple_fault_ends_the_run_under_no_reboot(assemble, tmp_path):
    body = r"""
    PRINT "about to fault", 10
    lidt [idtr]
    ud2
idtr:
    dw 0
    dd 0
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body),
                                      no_reboot=True)
    assert out == "about to fault\n"
    assert result.reason == "triple-fault"
    assert "#UD" in result.message


def test_long_mode_page_fault_on_ist_stack_reads_cr2_and_error_code(assemble, tmp_path):
    body = r"""
    START_LONG_MODE
    SET_TSS64 tss64
    mov qword [tss64 + 0x24], ist1_top + 8   ; IST1 (misaligned on purpose: CPU aligns)
    lidt [idtr64]
    mov rsp, 0x80000
    mov rbx, 0x40000000
    mov dword [rbx + 16], 0x5A5A5A5A        ; not mapped: #PF, write, not present
    PRINT64 "after fault value="
    mov eax, [rbx + 16]
    call puthex64
    mov al, 10
    call putc64
    mov al, 0
    out 0xF4, al

pf_handler:
    PRINT64 "PF cr2="
    mov rax, cr2
    call puthex64
    PRINT64 " err="
    mov rax, [rsp]
    call puthex64
    PRINT64 " ist="
    mov rax, rsp
    mov rcx, ist1_top - 48
    cmp rax, rcx
    sete al
    add al, '0'
    call putc64
    mov al, 10
    call putc64
    ; map 1 GiB -> a 2 MiB page at physical 0x200000 and retry
    mov qword [pdpt + 8], pd2 + 3
    mov qword [pd2], 0x200083
    add rsp, 8
    iretq

align 16
idt64:
    times 14 dq 0, 0
    GATE64 pf_handler, 0x38, 0x8E, 1
idt64_end:
idtr64:
    dw idt64_end - idt64 - 1
    dq idt64
align 16
tss64: times 0x68 db 0
align 16
    times 512 db 0
ist1_top:
    times 64 db 0
bits 32
align 4096
pd2: times 512 dq 0
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body, True))
    assert out == ("PF cr2=0000000040000010 err=0000000000000002 ist=1\n"
                   "after fault value=000000005A5A5A5A\n")
    assert result.exit_status == 1


def test_syscall_sysret_round_trip_from_ring3(assemble, tmp_path):
    body = r"""
    START_LONG_MODE
    mov rsp, 0x80000
    SYSCALL_SETUP syscall_entry, 0x600  ; FMASK: clear IF and bit 10 (DF)
    ; to ring 3 with IRETQ: SS 0x3B (sysret's SS: base+8 = 0x38|3 -> user data is 0x20|3)
    push 0x23
    push 0x70000
    push 0x202
    push 0x43                 ; user code 64 (0x40 | 3)
    push user_code
    iretq

user_code:
    mov rbx, 0x1234
    syscall
after_syscall:
    PRINT64 "back in ring 3, cs="
    mov ax, cs
    movzx rax, ax
    call puthex64
    mov al, 10
    call putc64
    mov al, 0
    out 0xF4, al              ; allowed: the handler raised IOPL to 3

syscall_entry:
    PRINT64 "syscall rcx-ok="
    mov rax, after_syscall
    cmp rcx, rax
    sete al
    add al, '0'
    call putc64
    PRINT64 " r11="
    mov rax, r11
    call puthex64
    PRINT64 " cs="
    mov ax, cs
    movzx rax, ax
    call puthex64
    mov al, 10
    call putc64
    or r11, 3 << 12           ; give ring 3 IOPL 3 so it may write the exit port
    o64 sysret
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body, True))
    assert out == ("syscall rcx-ok=1 r11=0000000000000202 cs=0000000000000038\n"
                   "back in ring 3, cs=0000000000000043\n")
    assert result.exit_status == 1


def test_sysenter_sysexit_round_trip(assemble, tmp_path):
    body = r"""
    LOAD_GDT
    mov ecx, 0x174            ; SYSENTER_CS = 0x08 (SS 0x10; SYSEXIT: CS 0x1B, SS 0x23)
    mov eax, 0x08
    xor edx, edx
    wrmsr
    mov ecx, 0x175
    mov eax, kstack_top
    wrmsr
    mov ecx, 0x176
    mov eax, sysenter_entry
    wrmsr
    push 0x23
    push ustack_top
    push 0x3202               ; IOPL 3 so ring 3 may print
    push 0x1B
    push user_code
    iret

user_code:
    mov ecx, ustack_top - 16  ; where SYSEXIT will put ESP
    mov edx, user_back        ; and EIP
    sysenter
user_back:
    PRINT "back in ring "
    mov ax, cs
    and eax, 3
    call puthex
    PRINT " esp-ok="
    cmp esp, ustack_top - 16
    sete al
    add al, '0'
    call putc
    mov al, 10
    call putc
    mov al, 0
    call exit

sysenter_entry:
    PRINT "sysenter esp-ok="
    cmp esp, kstack_top
    sete al
    add al, '0'
    call putc
    PRINT " cs="
    mov ax, cs
    movzx eax, ax
    call puthex
    mov al, 10
    call putc
    sysexit

align 16
    times 1024 db 0
kstack_top:
    times 1024 db 0
ustack_top:
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body))
    assert out == ("sysenter esp-ok=1 cs=00000008\n"
                   "back in ring 00000003 esp-ok=1\n")
    assert result.exit_status == 1
