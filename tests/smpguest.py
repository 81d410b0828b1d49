"""An -smp 2 guest whose output does not depend on the schedule: the BSP asks the AP
for each line by a fixed IPI and halts until the AP's answering IPI, so saved state
holds both vCPUs busy, halted, with interrupts pending or in service.

For n = 1..LINES the BSP computes f(n) itself, stores n as a request and sends
vector 0x50 to APIC ID 1; the AP's handler computes g(n) (a loop long enough to
be cut by a turn's end), stores it and answers with vector 0x51; the BSP, halted
with IF=1 meanwhile, prints ``n f(n) g(n)``.  Then it exits (isa-debug-exit status 1).
"""

from __future__ import annotations

from guestlib import protected_mode_guest

LINES = 24
WORK = 150_000  # iterations of each side's loop per line

BODY = r"""
    jmp setup
request: dd 0
answer: dd 0
answered: dd 0
ap_up: dd 0

; g(n): x = n; WORK times x = x * 5 + n (mod 2^32)
ap_request:
    pusha
    mov ebx, [request]
    mov eax, ebx
    mov ecx, WORK
.work:
    lea eax, [eax + eax * 4]
    add eax, ebx
    dec ecx
    jnz .work
    mov [answer], eax
    mov [answered], ebx
    mov dword [0xFEE000B0], 0          ; EOI before answering
    mov dword [0xFEE00310], 0          ; to APIC ID 0
    mov dword [0xFEE00300], 0x4051     ; fixed, vector 0x51
    popa
    iret

bsp_wakeup:
    mov dword [0xFEE000B0], 0
    iret

    AP_TRAMPOLINE
    mov esp, 0x70000
    lidt [idtr]
    mov dword [0xFEE000F0], 0x1FF      ; this AP's APIC on
    mov dword [ap_up], 1
    sti
.idle:
    hlt
    jmp .idle

setup:
    LOAD_GDT
    SET_GATE 0x50, ap_request
    SET_GATE 0x51, bsp_wakeup
    lidt [idtr]
    PIC_MASK_ALL                       ; only the APIC interrupts
    mov dword [0xFEE000F0], 0x1FF
    COPY_AP_TRAMPOLINE
    mov dword [0xFEE00310], 1 << 24
    mov dword [0xFEE00300], 0x4500     ; INIT to APIC ID 1
    mov dword [0xFEE00300], 0x4608     ; STARTUP at 0x8000
.up:
    pause
    cmp dword [ap_up], 1
    jne .up
    mov ebx, 0
.line:
    inc ebx
    ; f(n): x = n; WORK times x = x * 3 + 7
    mov eax, ebx
    mov ecx, WORK
.work:
    lea eax, [eax + eax * 2 + 7]
    dec ecx
    jnz .work
    mov edi, eax
    cli
    mov [request], ebx
    mov dword [0xFEE00310], 1 << 24
    mov dword [0xFEE00300], 0x4050     ; fixed, vector 0x50, to APIC ID 1
.wait:
    cmp [answered], ebx
    je .print
    sti
    hlt                                ; STI's shadow: the wake-up cannot slip in between
    cli
    jmp .wait
.print:
    mov eax, ebx
    call puthex
    mov al, ' '
    call putc
    mov eax, edi
    call puthex
    mov al, ' '
    call putc
    mov eax, [answer]
    call puthex
    mov al, 10
    call putc
    cmp ebx, LINES
    jb .line
    mov al, 0
    call exit
"""


def source(work: int = WORK, map_file: str | None = None) -> str:
    """The nasm source; ``map_file``: where nasm writes the symbols' addresses."""
    head = f"[map symbols {map_file}]\n" if map_file else ""
    return (f"{head}%define LINES {LINES}\n%define WORK {work}\n"
            + protected_mode_guest(BODY, interrupts=True, smp=True))


def symbols(map_file: str) -> dict[str, int]:
    """Addresses from nasm's map of :func:`source`."""
    out = {}
    for line in open(map_file).read().splitlines():
        parts = line.split()
        if len(parts) == 3 and all(c in "0123456789ABCDEF" for c in parts[0]):
            out[parts[2]] = int(parts[1], 16)
    return out


def expected(work: int = WORK) -> str:
    """What the guest prints, computed here in closed form: WORK steps of
    x = a*x + b from x = n give a^W*n + b*(a^W - 1)/(a - 1), mod 2^32."""
    mask = 0xFFFFFFFF
    p3 = pow(3, work, 1 << 33)
    p5 = pow(5, work, 1 << 34)
    lines = []
    for n in range(1, LINES + 1):
        f = (p3 * n + 7 * (((p3 - 1) % (1 << 33)) // 2)) & mask
        g = (p5 * n + n * (((p5 - 1) % (1 << 34)) // 4)) & mask
        lines.append(f"{n:08X} {f:08X} {g:08X}\n")
    return "".join(lines)
