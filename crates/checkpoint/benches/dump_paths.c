// Probe (branch dump3): CPU seconds per GiB of the ways a dump can move a child's memory into
// a pages file. Usage: dump_paths MiB MODE FILE [crc]; MODE: raw | pwrite | pwrite-re | mmap-re |
// mmap-nf | mmap-pw | mmap-pw-re | splice-re (-re: overwrite an existing file; -nf: no
// fallocate; -pw: MADV_POPULATE_WRITE). crc=1 adds a naive one-lane CRC32C (slower than the
// engine's 3-lane one). Build: gcc -O2 -msse4.2 -o dump_paths dump_paths.c. Figures: docs/PERFORMANCE.md.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <nmmintrin.h>
static double cpu(void){struct rusage r;getrusage(RUSAGE_SELF,&r);return r.ru_utime.tv_sec+r.ru_stime.tv_sec+(r.ru_utime.tv_usec+r.ru_stime.tv_usec)/1e6;}
static double wall(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static unsigned crc(const unsigned char*p,size_t n){unsigned long c=0;for(size_t i=0;i<n;i+=8)c=_mm_crc32_u64(c,*(const unsigned long*)(p+i));return c;}
#define B (1<<20)
int main(int argc,char**argv){
  size_t mib=atoi(argv[1]); const char*mode=argv[2]; const char*path=argv[3]; int docrc=argc>4&&atoi(argv[4]);
  size_t len=mib<<20;
  char*reg=mmap(0,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  int pfd[2];pipe(pfd);
  pid_t c=fork();
  if(!c){for(size_t i=0;i<len;i+=4096)reg[i]=i>>12;write(pfd[1],"x",1);pause();_exit(0);}
  char x;read(pfd[0],&x,1);
  int recycle=strstr(mode,"re")!=0;
  if(!recycle) unlink(path);
  int fd=open(path,O_RDWR|O_CREAT,0600);
  if(recycle){ /* make sure it exists full */ struct stat st; fstat(fd,&st); if((size_t)st.st_size<len){fallocate(fd,0,0,len);} }
  unsigned char*buf=aligned_alloc(4096,B); memset(buf,0,B);
  volatile unsigned sink=0;
  double c0=cpu(),w0=wall();
  if(!recycle && !strstr(mode,"nf")) fallocate(fd,0,0,len);
  double c1=cpu();
  if(strstr(mode,"pwrite")){
    for(size_t o=0;o<len;o+=B){struct iovec l={buf,B},r={reg+o,B};process_vm_readv(c,&l,1,&r,1,0); if(docrc)sink+=crc(buf,B); pwrite(fd,buf,B,o);}
  } else if(strstr(mode,"mmap")){
    int nf=strstr(mode,"nf")!=0, pw=strstr(mode,"pw")!=0;
    if(nf){ c1=cpu(); ftruncate(fd,len);} 
    char*m=mmap(0,len,PROT_READ|PROT_WRITE,MAP_SHARED|((nf||pw)?0:MAP_POPULATE),fd,0);
    if(pw){ if(madvise(m,len,23)) perror("populate_write"); }
    for(size_t o=0;o<len;o+=B){struct iovec l={m+o,B},r={reg+o,B};process_vm_readv(c,&l,1,&r,1,0); if(docrc)sink+=crc((unsigned char*)m+o,B);}
    munmap(m,len);
  } else if(strstr(mode,"raw")){
    for(size_t o=0;o<len;o+=B){struct iovec l={buf,B},r={reg+o,B};process_vm_readv(c,&l,1,&r,1,0);}
  } else if(strstr(mode,"splice")){
    /* vmsplice from a self copy (stand-in for the target's injected vmsplice) */
    int p[2];pipe(p);fcntl(p[1],F_SETPIPE_SZ,B);
    char*own=mmap(0,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_POPULATE,-1,0);
    memset(own,1,len); c1=cpu(); w0=wall(); double cs=c1; if(!recycle){ fallocate(fd,0,0,len);} c1=cpu(); c0=cs;
    for(size_t o=0;o<len;o+=B){size_t done=0;while(done<B){struct iovec v={own+o+done,B-done};ssize_t n=vmsplice(p[1],&v,1,0);if(n<=0){perror("vmsplice");return 1;}
      loff_t off=o+done; ssize_t k=0; while(k<n){ssize_t s=splice(p[0],0,fd,&off,n-k,SPLICE_F_MOVE);if(s<=0){perror("splice");return 1;}k+=s;} done+=n;}
      if(docrc){/* read back via pread into buf (cache hot) */ pread(fd,buf,B,o); sink+=crc(buf,B);} }
  }
  double c2=cpu(),w2=wall();
  double g=len/1073741824.0;
  printf("%-10s %5zu MiB crc=%d: cpu/GiB total %.3f (reserve %.3f, copy %.3f) wall %.3f s\n",mode,mib,docrc,(c2-c0)/g,(c1-c0)/g,(c2-c1)/g,w2-w0);
  kill(c,9);waitpid(c,0,0);
  return 0;
}
